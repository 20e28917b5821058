"""``python -m langchain_fslm.evaluation ...``: the lm-eval command line with our model types registered.

Example::

    python -m langchain_fslm.evaluation --model fslm --model_args stack=runs/fslm-stack \
        --tasks tinyArc --include_path DIR

The stock ``lm_eval`` command has no plugin hook for third-party models; importing this package first
registers ``fslm`` and ``langchain``, then lm-eval's own CLI runs unchanged.
"""

import langchain_fslm.evaluation  # noqa: F401  (registers the model types)


def main() -> None:
    """Run lm-eval's CLI."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
