"""CrossMat Space app: ``python app.py --model DIR_OR_HUB_ID [--host 127.0.0.1] [--port 7860]`` (the same as
``crossmat app``; the app itself is ``crossmat.inference.app``, shipped with the package).

Hugging Face Spaces (Gradio SDK) run ``app.py`` without arguments: set the model with the Space
variable ``CROSSMAT_MODEL`` (a Hub id or a folder inside the Space repo). See docs/inference.md.
"""

from crossmat.inference.app import main

if __name__ == "__main__":
    raise SystemExit(main())
