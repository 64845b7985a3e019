"""CrossMat Space app: ``python app.py --model DIR_OR_HUB_ID [--host 127.0.0.1] [--port 7860]``.

Hugging Face Spaces (Gradio SDK) run ``app.py`` without arguments: set the model with the Space
variable ``CROSSMAT_MODEL`` (a Hub id or a folder inside the Space repo). See docs/inference.md.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Gradio app for a CrossMat property model")
    parser.add_argument("--model", default=os.environ.get("CROSSMAT_MODEL"), help="model folder or Hub id")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--no-explain", action="store_true", help="predictions only (no explanation panel)")
    args = parser.parse_args(argv)
    if not args.model:
        parser.error("no model: pass --model DIR_OR_HUB_ID or set CROSSMAT_MODEL")
    from inference.app import build_app

    try:
        demo = build_app(args.model, explain=not args.no_explain)
    except (OSError, ValueError) as err:
        print(f"app.py: error: {err}", file=sys.stderr)
        return 2
    demo.launch(server_name=args.host, server_port=args.port, show_error=False)  # queue bounded by build_app
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
