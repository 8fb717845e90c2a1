"""``fourm serve``: the page (Gradio) over a :class:`~fourm.demo.serve.Server`.

Gradio is the field's usual tool for a model's demo page (the reference's hosted demo is one): it gives
uploads, a queue, streaming updates from a generator and an HTTP API (``gradio_client``) for free. It
is an optional dependency (``pip install 'fourm[serve]'``) imported only here, inside :func:`build_page`.

The page has two tabs. *Generate*: any subset of inputs (an image, a held-out scene, a caption with
``[MASK]`` spans, depth and segmentation files, boxes as JSON), the chain of targets in the order they
were picked with a row of settings per target, and a seed; each modality appears as it finishes, then a
zip of the outputs. *Search* (with ``--index``): a caption and/or an image ranked against the gallery.
Bad input shows one line in the status box and an error notice, never a traceback.
"""

from __future__ import annotations

import os

from fourm.demo.serve import AUTO, SETTINGS, TILE, UPLOADS, GenerateRequest, Server
from fourm.errors import one_line
from fourm.generation.schedule import PARALLEL_SCHEMES
from fourm.retrieval.embed import EMBEDDERS

BAD_INPUT = (ValueError, LookupError, OSError)  # the user's to fix (as fourm.errors has it); anything else is a bug
NO_SCENE = "(none)"


def _gradio():
    try:
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local page
        import gradio as gr
    except ImportError:
        raise ValueError("fourm serve needs gradio: pip install 'fourm[serve]'") from None
    return gr


def build_page(server: Server):
    """The Gradio Blocks of ``server``'s page (not launched)."""
    gr = _gradio()
    inputs = server.inputs()
    with gr.Blocks(title="fourm") as page:
        gr.Markdown(f"## fourm: any-to-any generation and retrieval\nmodel `{server.model_dir}` · "
                    f"{len(server.pipe.specs)} modalities · targets: {', '.join(server.targets())}")
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column(scale=1):
                    gr.Markdown("**Inputs** (any subset)")
                    files = {key: gr.File(label=f"{key} file" + (" (16-bit PNG mm, or .npy m)" if key == "depth"
                                                                 else ""), elem_id=f"upload-{key}", height=110,
                                          visible=key in inputs)
                             for key in UPLOADS}
                    scene = gr.Dropdown([NO_SCENE, *server.scenes], value=NO_SCENE, label="held-out scene",
                                        visible=bool(server.scenes), elem_id="scene")
                    scene_keys = [k for k in inputs if any(k in s for s in server.scenes.values())]
                    scene_modalities = gr.CheckboxGroup(scene_keys, value=[k for k in scene_keys if k == "rgb"],
                                                        label="give from the scene", visible=bool(server.scenes))
                    caption = gr.Textbox(label="caption", placeholder="a large [MASK] cube left of a small sphere",
                                         visible="caption" in inputs, elem_id="caption")
                    boxes = gr.Textbox(label="boxes (det) as JSON", visible="det" in inputs, lines=2,
                                       placeholder='[{"box": [0.1, 0.2, 0.5, 0.6], "label": "cube"}]')
                with gr.Column(scale=1):
                    gr.Markdown("**Chain**: targets are generated in the order picked; each conditions the next")
                    targets = gr.Dropdown(server.targets(), value=[], multiselect=True, label="targets",
                                          elem_id="targets")
                    table = gr.Dataframe(headers=list(SETTINGS), datatype=["str", "str", "number", "number", "number"],
                                         type="array", interactive=True, label="per-target settings (empty: "
                                         "the defaults below)", elem_id="chain")
                    with gr.Row():
                        scheme = gr.Dropdown([AUTO, *PARALLEL_SCHEMES], value=AUTO, label="scheme",
                                             info="sequences are always ar")
                        steps = gr.Number(8, label="steps", precision=0, minimum=1)
                    with gr.Row():
                        temperature = gr.Number(1.0, label="temperature", minimum=0)
                        guidance = gr.Number(0.0, label="guidance")
                        seed = gr.Number(0, label="seed", precision=0, elem_id="seed")
                    button = gr.Button("Generate", variant="primary", elem_id="generate")
            status = gr.Textbox(label="status", interactive=False, elem_id="status")
            # png: the tiles as rendered, lossless (Gradio's default is webp); fixed columns keep tiles at their size
            given = gr.Gallery(label="given", columns=6, height=TILE // 2 + 90, format="png", object_fit="contain",
                               fit_columns=False, elem_id="given")
            results = gr.Gallery(label="generated", columns=6, height=TILE + 90, format="png", object_fit="contain",
                                 fit_columns=False, elem_id="results")
            archive = gr.File(label="outputs (corpus formats, tokens.json, grid.png)", elem_id="archive")

        def fill_table(names, rows):
            """One row per target in chain order, keeping what was typed for targets already there."""
            kept = {r[0]: list(r) for r in rows or [] if r and r[0]}
            return [kept.get(n, [n, "", None, None, None]) for n in names or []]

        targets.change(fill_table, [targets, table], table, api_name=False, queue=False)
        scene.change(lambda key: server.scene_tiles(None if key == NO_SCENE else key), scene, given, api_name=False,
                     queue=False)  # a look at the scene before generating

        # the parameters name the HTTP API's fields (gradio_client: predict(rgb=..., targets=..., api_name="/generate"))
        def run(rgb, depth, semseg, scene, scene_modalities, caption, boxes, targets, settings, scheme, steps,
                temperature, guidance, seed):
            request = GenerateRequest(
                files={"rgb": rgb, "depth": depth, "semseg": semseg}, caption=caption or "", boxes=boxes or "",
                scene=None if scene in (None, NO_SCENE) else scene, scene_modalities=list(scene_modalities or []),
                targets=list(targets or []), settings=settings or [], scheme=scheme or AUTO, steps=int(steps or 8),
                temperature=float(1.0 if temperature is None else temperature), guidance=float(guidance or 0),
                seed=int(seed or 0))
            try:
                for update in server.generate(request):
                    yield update.given, update.tiles, update.status, update.archive and str(update.archive)
            except BAD_INPUT as e:
                message = one_line(e)
                yield [], [], f"error: {message}", None
                raise gr.Error(message, print_exception=False) from None

        button.click(run, [files["rgb"], files["depth"], files["semseg"], scene, scene_modalities, caption, boxes,
                           targets, table, scheme, steps, temperature, guidance, seed],
                     [given, results, status, archive], api_name="generate")

        if server.index is not None:
            with gr.Tab("Search"):
                gr.Markdown(f"Rank the {len(server.index)} scenes of `{server.index.info['corpus']}` by their "
                            f"{server.index.modality} vectors ({server.index.info['spec']['embedder']} gallery)")
                with gr.Row():
                    query_text = gr.Textbox(label="caption", elem_id="query-caption", scale=3)
                    query_image = gr.File(label="image", elem_id="query-image", height=110, scale=2)
                    with gr.Column(scale=1):
                        k = gr.Number(8, label="k", precision=0, minimum=1, maximum=100)
                        # a query carries no corpus vectors: the model or the labeller embeds it
                        embedder = gr.Dropdown([e for e in EMBEDDERS if e != "corpus"],
                                               value=server.index.info["query_embedder"],
                                               label="query embedder")
                search_button = gr.Button("Search", variant="primary", elem_id="search")
                search_status = gr.Textbox(label="status", interactive=False, elem_id="search-status")
                hits = gr.Gallery(label="hits", columns=8, height=TILE + 90, format="png", object_fit="contain",
                                  fit_columns=False, elem_id="hits")

                def search(caption, image, k, embedder):
                    try:
                        tiles, line = server.search(caption or "", image, int(k or 8), embedder)
                    except BAD_INPUT as e:
                        message = one_line(e)
                        yield [], f"error: {message}"
                        raise gr.Error(message, print_exception=False) from None
                    yield tiles, line

                search_button.click(search, [query_text, query_image, k, embedder], [hits, search_status],
                                    api_name="search")
    return page


def serve(model: str, tokenizers: str, index: str | None = None, corpus: str | None = None,
          host: str = "127.0.0.1", port: int = 7860, device: str = "cpu") -> None:
    """Load the model (and index) and serve the page until interrupted."""
    server = Server(model, tokenizers, index, corpus, device=device)  # bad paths fail before gradio loads
    gr = _gradio()
    page = build_page(server)
    # one request at a time on the model (Server.lock guards it too, for calls that bypass the queue);
    # other tabs wait in the queue and see their place in it
    page.queue(default_concurrency_limit=1)
    # system fonts: the default theme would fetch Google's, which an offline machine cannot
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    print(f"fourm serve: http://{host}:{port} (Ctrl-C stops it)", flush=True)
    page.launch(server_name=host, server_port=port, theme=theme, ssr_mode=False, quiet=True, show_error=False,
                footer_links=["api"])
