"""Video tokenizer round trip on held-out scenes' camera moves: PSNR per frame, codebook use, videos/s.

    python benchmarks/video_tokenizer.py --tokenizers TOKENIZERS [--scenes 64 --seed 1]

Uses ``TOKENIZERS/tok_video``, or wraps ``TOKENIZERS/tok_rgb`` when there is none (the video tokenizer is
that RGB tokenizer per frame). Held-out videos are rendered here (scenes ``--seed``; training corpora use
seed 0). Rows: the round trip ``decode(encode(video))`` per frame, and a trivial baseline, frame 0 held
still (what a model that ignores the move would show). Speeds per CPU second, one thread.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from timing import cpu_timed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizers", required=True, help="folder with tok_video or tok_rgb")
    p.add_argument("--scenes", type=int, default=64)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args()

    import numpy as np
    import torch

    from fourm.pretrained import load_pretrained
    from fourm.tokenization.video import VideoTokenizer
    from pseudolabel.sources.scenes import render_scene
    from tokenizers_train.family import code_stats

    torch.set_num_threads(1)
    folder = Path(args.tokenizers)
    model = (load_pretrained(folder / "tok_video") if (folder / "tok_video").is_dir()
             else VideoTokenizer.wrap(load_pretrained(folder / "tok_rgb")))
    size = model.config.image.image_size
    videos = np.stack([render_scene(args.seed * 1_000_003 + i, size, ("video",))["video"] for i in range(args.scenes)])
    ids = torch.cat([model.encode(list(videos[i:i + args.batch])) for i in range(0, len(videos), args.batch)])
    recon = np.stack(model.decode(ids))

    def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # per frame index, over the videos
        mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(0, 2, 3, 4))
        return 10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))

    frames = model.config.num_frames
    print(f"{len(videos)} held-out videos of {frames} frames at {size} px; {model.num_tokens} tokens each")
    print(f"{'frame':>5} {'round trip dB':>14} {'frame 0 held dB':>16}")
    trip, still = psnr(recon, videos), psnr(np.repeat(videos[:, :1], frames, axis=1), videos)
    for f in range(frames):
        print(f"{f:5d} {trip[f]:14.2f} {still[f]:16.2f}")
    print(f"{'all':>5} {trip.mean():14.2f} {still[1:].mean():16.2f} (baseline over frames 1-{frames - 1})")
    s = code_stats(ids, model.vocab_size)
    print(f"codes: usage {s['usage']:.3f}, perplexity {s['perplexity']:.0f} of {model.vocab_size}")
    batch = list(videos[:args.batch])
    encode_s, decode_s = cpu_timed(lambda: model.encode(batch)), cpu_timed(lambda: model.decode(ids[:args.batch]))
    print(f"encode {len(batch) / encode_s:6.1f} videos/s   decode {len(batch) / decode_s:6.1f} videos/s "
          f"(batch {len(batch)}, 1 thread, per CPU second)")
    seconds = cpu_timed(lambda: [render_scene(i, 64, ("video",)) for i in range(16)])
    print(f"scenes source at 64 px with video: {16 / seconds:.1f} scenes/s per CPU second")


if __name__ == "__main__":
    main()
