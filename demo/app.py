"""A demo page for a trained TinyTransformer: type numbers, see the model's answer beside the task's right answer, and
its cross-attention weights per decoder layer and head.

    python demo/app.py --model outputs/tiny-transformer-reverse   # a folder written by train/train.py, or a Hub id

Ready to be a Hugging Face Space (demo/README.md): without --model, the model is the one named by the environment
variable TINY_TRANSFORMER_MODEL. The page's logic is `hf_tiny_transformer_train.demo`; this file only lays it out.
"""

from __future__ import annotations

import argparse
import gc
import io
import os
from typing import TYPE_CHECKING

from matplotlib.figure import Figure
from PIL import Image

from hf_tiny_transformer_train.data import TASKS
from hf_tiny_transformer_train.demo import EXAMPLES, Demo

if TYPE_CHECKING:
    import gradio as gr

MODEL_VARIABLE = "TINY_TRANSFORMER_MODEL"


def figure_image(figure: Figure) -> Image.Image:
    """`figure` as a picture, cropped to what it draws (the page scales it to its width)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    buffer.seek(0)
    return Image.open(buffer)


def build_page(demo: Demo) -> gr.Blocks:
    """The page: an input box, the model's answer and the right answer side by side, a verdict with notes, and the
    cross-attention figure."""
    # Imported here, once the arguments and the model are checked: Gradio takes about 2 s to import, and a wrong
    # --model is reported before that. No telemetry and no version check, so that the page reaches nothing outside
    # this machine (read as Gradio is imported).
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    def answer(text: str) -> tuple[str, str, str, Image.Image | None]:
        response = demo.respond(text)
        if response.figure is None:
            return f"**No answer:** {response.message}", "", "", None
        verdict = "**Right.**" if response.is_right else "**Wrong.**"
        image = figure_image(response.figure)
        return f"{verdict} {response.message}".strip(), response.answer, response.right_answer, image

    task = demo.task.name
    with gr.Blocks(title=f"TinyTransformer: {task}", analytics_enabled=False) as page:
        gr.Markdown(
            f"# TinyTransformer: {task}\n{demo.description}. Type numbers and press Enter: the model answers by greedy "
            "decoding, beside the right answer."
        )
        with gr.Row(equal_height=True):
            numbers = gr.Textbox(label="Numbers", placeholder=EXAMPLES[task][0], elem_id="numbers", scale=4)
            submit = gr.Button("Answer", variant="primary", elem_id="submit", scale=1)
        gr.Examples(EXAMPLES[task], inputs=numbers)
        message = gr.Markdown(elem_id="message")
        with gr.Row():
            model_answer = gr.Textbox(label="The model's answer", elem_id="answer", interactive=False)
            right_answer = gr.Textbox(label="The right answer", elem_id="right_answer", interactive=False)
        gr.Markdown("Cross-attention weights α' while the model answers, per decoder layer and head:")
        attention = gr.Image(elem_id="attention", type="pil", interactive=False, show_label=False)
        outputs = [message, model_answer, right_answer, attention]
        submit.click(answer, numbers, outputs)
        numbers.submit(answer, numbers, outputs)
    return page


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        default=os.environ.get(MODEL_VARIABLE),
        help=f"a folder written by train/train.py, or a Hub id (default: the environment variable {MODEL_VARIABLE})",
    )
    parser.add_argument("--revision", help="the Hub model's commit (a full hash) or branch")
    parser.add_argument("--task", choices=TASKS, help="the task, where the model card does not name it")
    parser.add_argument("--host", help="the address to serve on (default: Gradio's, 127.0.0.1 or GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, help="the port (default: Gradio's, 7860 or GRADIO_SERVER_PORT)")
    args = parser.parse_args(argv)
    if args.model is None:
        parser.error(f"name the model with --model or the environment variable {MODEL_VARIABLE}")
    try:
        demo = Demo(args.model, task=args.task, revision=args.revision)
    except ValueError as error:
        parser.error(str(error))
    build_page(demo).launch(server_name=args.host, server_port=args.port, ssr_mode=False)


if __name__ == "__main__":
    gc.freeze()  # as train/train.py: the imports' objects out of the cyclic collector's sight
    main()
