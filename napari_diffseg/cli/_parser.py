"""The argument parser: option types (bounds from core.method.config.LIMITS), option groups and the sub-commands."""

from __future__ import annotations

import argparse
import math

from napari_diffseg import __version__
from napari_diffseg.core.method.config import LIMITS, Layout

from napari_diffseg.cli._common import PROG
from napari_diffseg.cli._export import _cmd_export
from napari_diffseg.cli._folders import _cmd_eval, _cmd_info, _cmd_predict, _cmd_train
from napari_diffseg.cli._objects import _cmd_measure
from napari_diffseg.cli._projects import (_cmd_project_create, _cmd_project_export, _cmd_project_pretrain,
                                          _cmd_project_status, _cmd_project_train)


class _UsageError(Exception):
    """A command-line usage mistake found by argparse (unknown option, missing argument, bad number)."""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors become one line (``diffseg: error: ...``) instead of usage + message."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise _UsageError(f"{message} (see '{self.prog} --help')")


def _int_at_least(minimum: int, why: str = ""):
    """argparse type: a whole number >= ``minimum`` (``why`` explains the bound in the error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}{why}, got {text}")
        return value
    return parse


def _setting(name: str, why: str = ""):
    """argparse type of a whole-number training setting, within its ``core.method.config.LIMITS`` (one source of truth
    for the CLI, the Train panel and TrainConfig.validate)."""
    bounds = LIMITS[name]

    def parse(text: str) -> int:
        value = _int_at_least(int(bounds.minimum), why)(text)
        if bounds.maximum is not None and value > bounds.maximum:
            raise argparse.ArgumentTypeError(f"must be at most {bounds.maximum:g}{why}, got {text}")
        return value
    return parse


_positive_int = _int_at_least(1)

# predict's counts of network passes per tile have a top, so no option value makes a run that never ends
_MAX_DRAWS = int(LIMITS["uncertainty_draws"].maximum)  # as many as a training run's uncertainty may take
_MAX_SAMPLING_STEPS = 1000  # the diffusion schedule's timesteps (teacher.NetworkConfig): more only repeat them


def _int_between(minimum: int, maximum: int):
    """argparse type: a whole number in [minimum, maximum]."""
    def parse(text: str) -> int:
        value = _int_at_least(minimum)(text)
        if value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {text}")
        return value
    return parse
_class_count = _setting("num_classes", " classes (background + one)")


def _budget(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"the time budget must be a positive number of seconds, got {text}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {text}")
    return value


def _common_options(for_subcommand: bool) -> argparse.ArgumentParser:
    """-q / -v / --debug, accepted before and after the subcommand (subcommand copies do not reset them)."""
    parent = argparse.ArgumentParser(add_help=False)
    suppress = argparse.SUPPRESS
    group = parent.add_argument_group("output")
    group.add_argument("-q", "--quiet", action="store_true", default=suppress if for_subcommand else False,
                       help="only warnings and errors, no progress bars")
    group.add_argument("-v", "--verbose", action="count", default=suppress if for_subcommand else 0,
                       help="more detail (debug log)")
    group.add_argument("--debug", action="store_true", default=suppress if for_subcommand else False,
                       help="show the full traceback of unexpected errors")
    return parent


def _add_device_options(parser: argparse.ArgumentParser, default_threads: str = "number of cores - 1") -> None:
    parser.add_argument("--device", default="auto", metavar="DEVICE",
                        help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps (default: auto)")
    parser.add_argument("--threads", type=_setting("threads"), default=None, metavar="N",
                        help=f"CPU threads for torch, at most the machine's cores (default: {default_threads}, or "
                             "$DIFFSEG_THREADS)")
    parser.add_argument("--no-bf16", action="store_true",
                        help="compute in float32 even where bfloat16 would be used (default: bf16 only where native)")


def _add_num_classes_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-classes", type=_class_count, default=2, metavar="K",
                        help="classes including background (default 2: any label > 0 is foreground)")


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    """The training options of ``train`` and ``project train``: budget, method, network, device."""
    parser.add_argument("--budget", type=_budget, default=300.0, metavar="SECONDS",
                        help="wall-time budget of the whole training (pretraining + co-training), default 300")
    parser.add_argument("--labels-only", action="store_true",
                        help="baseline: train the same network on the labelled images alone (same budget)")
    parser.add_argument("--preset", choices=["paper"], default=None,
                        help="paper: the method as arXiv 2504.01547 describes it (stage 1 on, twins from their own "
                             "initialisation, a linear ramp, 3 rounds every step, cross pseudo supervision on noised "
                             "forwards), to compare with the default's measured departures; options given win")
    parser.add_argument("--seed", type=_setting("seed"), default=0, metavar="N", help="random seed (default 0)")
    parser.add_argument("--steps", type=_setting("max_steps"), default=None, metavar="N",
                        help="also stop after N optimisation steps (reproducible runs)")
    parser.add_argument("--rounds", type=_setting("rounds"), default=None, metavar="K",
                        help="pseudo-label rounds K of a co-training step that has rounds (default 1)")
    parser.add_argument("--rounds-every", type=_setting("rounds_every"), default=None, metavar="N",
                        help="compute the pseudo-label rounds on every N-th co-training step (default 4; "
                             "1 = every step as in the paper, slower on a CPU)")
    parser.add_argument("--chained-rounds", action="store_true",
                        help="condition each round on the previous round's mask instead of the teacher's")
    parser.add_argument("--pretrain-fraction", type=_fraction, default=None, metavar="F",
                        help="share of the budget for unsupervised teacher pretraining (default 0: it cost more than "
                             "it gave within minutes; 'diffseg project pretrain' runs it outside the budget)")
    parser.add_argument("--width", type=_setting("base_channels"), default=None, metavar="C",
                        help="base channels of the U-Nets (default 16; smaller is faster)")
    parser.add_argument("--layout", choices=[layout.value for layout in Layout], default=None,
                        help="volumes: a 2D network on slices (2d) or a 3D network on patches (3d); auto (default): "
                             "the planner decides from the voxel spacing, the shapes and the device, and "
                             "prints its plan; both: a 2D and a 3D network, half the budget each, their probabilities "
                             "averaged (members/2d and members/3d of the model folder)")
    parser.add_argument("--patch-size", type=_setting("patch_edge"), nargs="+", default=None, metavar="PX",
                        help="training patch size, 2 numbers (Y X: 2D images or slices of volumes) or 3 (Z Y X: a 3D "
                             "network) (default: the plan's, 128 128 for 2D, 32 64 64 for 3D on a CPU, larger on a "
                             "GPU)")
    parser.add_argument("--batch-size", type=_setting("batch_size"), default=None, metavar="N",
                        help="patches per step (default: the plan's, 8 in 2D and 2 in 3D on a CPU)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="settings",
                        help="any other training setting by its TrainConfig name (repeatable), e.g. --set cutmix=true "
                             "--set appearance=0.5: the method's measured options (benchmarks/quality/ABLATIONS.md); "
                             "the named options above win")
    _add_device_options(parser)


def _add_overwrite_option(parser: argparse.ArgumentParser, policy: str) -> None:
    """--overwrite: the one way to let a command replace files it did not create in this run (core.data.safety)."""
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace existing files; without it, nothing is written when {policy}")


def build_parser() -> argparse.ArgumentParser:
    common = _common_options(for_subcommand=True)
    parser = _Parser(
        prog=PROG,
        parents=[_common_options(for_subcommand=False)],
        description="Segment a whole image collection after labelling a few images: a diffusion teacher and a "
                    "co-trained student (arXiv 2504.01547).",
        epilog="Typical use: diffseg train images --labels labels --out model; "
               "diffseg predict model new_images --out masks; diffseg eval masks ground_truth. "
               "Rounds with review in napari: diffseg project --help",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = commands.add_parser(
        "train", parents=[common], help="train a model on a folder of images, a few of them labelled",
        description="Train on all images of IMAGES. An image is labelled when LABELS holds a file with the same "
                    "name stem (img_001.tif labels img_001.png); all other images are unlabelled and feed the "
                    "semi-supervised stages. MODEL_DIR receives best.pt (for predict), last.pt (for --resume), "
                    "model_card.json, losses.csv and pseudo_labels/. One run per MODEL_DIR: a second one is "
                    "refused. Ctrl-C, SIGTERM (SLURM's time limit, timeout, docker stop) and SIGHUP stop the run "
                    "after saving last.pt and best.pt and print the command that resumes it (exit 130, 143, 129).",
    )
    train.add_argument("images", metavar="IMAGES", help="folder of images (.tif, .tiff, .png, .jpg; 2D, RGB or 3D)")
    train.add_argument("--labels", required=True, metavar="LABELS",
                       help="folder of label images (0 = background, >0 = object), named like their images")
    train.add_argument("--out", required=True, metavar="MODEL_DIR", help="model folder to write")
    _add_training_options(train)
    _add_num_classes_option(train)
    train.add_argument("--objects", action="store_true",
                       help="objects mode: LABELS are instance masks (one id per object, e.g. uint16 TIFF; a mask "
                            "with one value is split by connected components), trained as 3 classes (background, "
                            "object interior, object boundary); predict then writes instance masks")
    train.add_argument("--boundary-width", type=_int_between(1, 8), default=None, metavar="PX",
                       help="objects mode: width of the boundary class inside each object's outline (default 1)")
    start = train.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true",
                       help="continue the interrupted or finished run in MODEL_DIR (from MODEL_DIR/last.pt); "
                            "give the same data and options, the budget counts the time already spent")
    start.add_argument("--warm-start", metavar="OTHER_MODEL_DIR", default=None,
                       help="initialise the networks from OTHER_MODEL_DIR/last.pt and skip pretraining")
    _add_overwrite_option(train, "MODEL_DIR holds a best.pt, last.pt, model_card.json, losses.csv or "
                                 "pseudo_labels/ that diffseg did not write (a model of an earlier diffseg run is "
                                 "replaced, with a warning)")
    train.set_defaults(handler=_cmd_train)

    predict = commands.add_parser(
        "predict", parents=[common], help="segment images with a trained model",
        description="Segment INPUT (an image file, a folder of images, a .zarr array or an OME-Zarr image) with "
                    "the model in MODEL_DIR. OUTPUT receives <stem>.tif, a uint8 mask (0 = background, class ids "
                    "otherwise; for a model trained with --objects an instance mask, uint16 or uint32 beyond "
                    "65,535 objects, decoded by a seeded watershed), and with --uncertainty <stem>_uncertainty.tif "
                    "(float32 in [0, 1]). Images over 16 "
                    "megapixels and zarr inputs are predicted block by block into <stem>.zarr, OME-Zarr labels "
                    "(NGFF multiscales, image-label colours; napari-ome-zarr, Fiji/MoBIE open it), then copied into "
                    "<stem>.tif.",
    )
    predict.add_argument("model", metavar="MODEL_DIR", help="model folder written by 'diffseg train'")
    predict.add_argument("input", metavar="INPUT", help="image file, folder of images, .zarr array or OME-Zarr image")
    predict.add_argument("--level", type=_int_between(0, 63), default=0, metavar="N",
                         help="resolution level of an OME-Zarr input: 0 full resolution (default), 1 the next "
                              "(usually half), ...; the masks have that level's size")
    predict.add_argument("--out", required=True, metavar="OUTPUT", help="folder for the masks")
    predict.add_argument("--uncertainty", action="store_true",
                         help="also write per-pixel uncertainty maps (normalised entropy of stochastic draws)")
    predict.add_argument("--draws", type=_int_between(1, _MAX_DRAWS), default=4, metavar="N",
                         help=f"stochastic draws for the uncertainty, 1 to {_MAX_DRAWS} (default 4)")
    predict.add_argument("--sampling-steps", type=_int_between(1, _MAX_SAMPLING_STEPS), default=1, metavar="N",
                         help=f"diffusion sampling steps per tile, 1 to {_MAX_SAMPLING_STEPS} (default 1: one "
                              "deterministic step)")
    predict.add_argument("--mirror", action="store_true",
                         help="test-time mirroring: the mean of the predictions of the image flipped along each "
                              "subset of its axes (4x the time in 2D and on slices, 8x in 3D)")
    predict.add_argument("--tile", type=_positive_int, nargs="+", default=None, metavar="PX",
                         help="tile size, 2 numbers (Y X) or 3 (Z Y X) (default 512 512 / 64 128 128)")
    predict.add_argument("--dask-scheduler", default=None, metavar="ADDRESS",
                         help="run the blocks of large images (over 16 megapixels, or .zarr) on this dask.distributed "
                              "scheduler, e.g. tcp://host:8786 (input, model and output on a shared file system)")
    predict.add_argument("--backend", choices=("auto", "torch", "openvino"), default="auto",
                         help="what runs the network: openvino (CPU only, 'napari-diffseg[openvino]'; several times "
                              "faster there), torch, or auto (default: openvino on a CPU where it is installed)")
    _add_device_options(predict, default_threads="every core")
    _add_overwrite_option(predict, "OUTPUT holds a file with a mask's name stem (any extension or case, e.g. a "
                                   "ground-truth a.png for the mask a.tif; also the masks of an earlier predict "
                                   "into OUTPUT, which the message names), or OUTPUT is or contains the folder of "
                                   "INPUT. A mask is never written over an input image")
    predict.set_defaults(handler=_cmd_predict)

    evaluate = commands.add_parser(
        "eval", parents=[common], help="score predicted masks against ground truth (Dice, Jaccard, HD95)",
        description="Compare the masks in PRED with those in MASKS, matched by name stem (foreground = value > 0). "
                    "Prints one row per image and a pooled/mean row (Dice and Jaccard pooled over all pixels, "
                    "HD95 averaged).",
    )
    evaluate.add_argument("pred", metavar="PRED", help="folder of predicted masks")
    evaluate.add_argument("masks", metavar="MASKS", help="folder of ground-truth masks")
    evaluate.add_argument("--csv", metavar="FILE", default=None, help="also write the table as CSV")
    evaluate.add_argument("--objects", action="store_true",
                          help="instance masks: object scores instead (AP = TP / (TP + FP + FN) at IoU 0.5 and its "
                               "mean over 0.5:0.95, object F1, count error; StarDist's and the DSB 2018 definitions)")
    _add_overwrite_option(evaluate, "FILE, or a file with its name stem, exists. A mask the command reads is "
                                    "never replaced")
    evaluate.set_defaults(handler=_cmd_eval)

    measure = commands.add_parser(
        "measure", parents=[common], help="per-object table (id, area/volume, centroid, mean intensity, bbox) as CSV",
        description="Measure every object of the instance masks in MASKS (matched to the images of IMAGES by name "
                    "stem; or two files): one CSV row per object with the image name, id, area (2D) or volume (3D) "
                    "in pixels, centroid, mean intensity per channel and bounding box (min inclusive, max "
                    "exclusive). A mask with one value is split into objects by connected components (a warning). "
                    "--project DIR measures every image of an objects project instead, on its current mask (the "
                    "ground truth of labelled and accepted images, else the latest pseudo-label), as the Predict "
                    "panel's 'Measure project' does.",
    )
    measure.add_argument("images", metavar="IMAGES", nargs="?", help="image file or folder of images")
    measure.add_argument("masks", metavar="MASKS", nargs="?", help="instance mask file or folder of instance masks")
    measure.add_argument("--project", metavar="DIR", default=None,
                         help="measure an objects project's current masks instead of IMAGES and MASKS")
    measure.add_argument("--out", required=True, metavar="TABLE.csv", help="the CSV table to write")
    _add_overwrite_option(measure, "TABLE.csv, or a file with its name stem, exists. An image or mask the command "
                                   "reads is never replaced")
    measure.set_defaults(handler=_cmd_measure)

    info = commands.add_parser("info", parents=[common], help="show what a model folder holds",
                               description="Print the model card summary of MODEL_DIR.")
    info.add_argument("model", metavar="MODEL_DIR", help="model folder written by 'diffseg train'")
    info.set_defaults(handler=_cmd_info)

    export = commands.add_parser(
        "export", parents=[common], help="write a model folder as a bioimage.io model package (.zip)",
        description="Write the model in MODEL_DIR as a bioimage.io model package (format 0.5): the mask pathway as "
                    "TorchScript with its threshold and working scale, the percentile normalisation as the spec's "
                    "preprocessing, a test input and output, a cover, the citation and the licence. Needs "
                    "'napari-diffseg[export]'. Test the package with 'bioimageio test MODEL.zip'.",
    )
    export.add_argument("model", metavar="MODEL_DIR", help="model folder written by 'diffseg train'")
    export.add_argument("--out", required=True, metavar="MODEL.zip", help="the package to write")
    export.add_argument("--sample", default=None, metavar="IMAGE",
                        help="an image of the kind the model segments, for the test input, output and cover "
                             "(default: a synthetic image)")
    export.add_argument("--name", default=None, help="the model's name in the package (default: the folder name)")
    export.add_argument("--author", action="append", default=None, metavar="NAME",
                        help="an author of the model (repeat for several; default: the user name)")
    export.add_argument("--license", default="CC-BY-4.0", metavar="SPDX",
                        help="licence of the model weights, an SPDX identifier (default CC-BY-4.0)")
    _add_overwrite_option(export, "MODEL.zip exists")
    export.set_defaults(handler=_cmd_export)
    _add_project_commands(commands, common)
    return parser


def _add_project_commands(commands, common: argparse.ArgumentParser) -> None:
    """``diffseg project create | train | status | export``: the project store that the napari panels also use."""
    project = commands.add_parser(
        "project", parents=[common], help="work on a project folder (the store the napari plugin uses)",
        description="A project folder holds the images, their labels, each round's pseudo-labels and models, and a "
                    "manifest of every image's status. The napari panels open the same folders, so labelling and "
                    "review can happen in napari and training here, or the other way round.",
        epilog="Typical use: diffseg project create proj --images images --labels labels; diffseg project train "
               "proj; review in napari; diffseg project train proj --next-round; diffseg project export proj "
               "--out masks",
    )
    actions = project.add_subparsers(dest="project_command", metavar="ACTION", required=True)

    create = actions.add_parser(
        "create", parents=[common], help="make a project from a folder of images (and some labels)",
        description="Create a project in DIR (a new or empty folder) and copy in every image of IMAGES; a file of "
                    "LABELS with an image's name stem becomes that image's ground truth.",
    )
    create.add_argument("project", metavar="DIR", help="new or empty folder for the project")
    create.add_argument("--images", required=True, metavar="IMAGES",
                        help="folder of images (.tif, .tiff, .png, .jpg; 2D, RGB or 3D)")
    create.add_argument("--labels", default=None, metavar="LABELS",
                        help="folder of label images (0 = background, >0 = object), named like their images")
    _add_num_classes_option(create)
    create.add_argument("--objects", action="store_true",
                        help="objects mode: labels are instance masks (one id per object), kept with their ids; "
                             "training learns background / interior / boundary, pseudo-labels and export are "
                             "instance masks")
    create.add_argument("--boundary-width", type=_int_between(1, 8), default=None, metavar="PX",
                        help="objects mode: width of the boundary class inside each object's outline (default 1)")
    create.set_defaults(handler=_cmd_project_create)

    train = actions.add_parser(
        "train", parents=[common], help="train the project's current round",
        description="Train the current round on all images of the project: labelled and accepted images are the "
                    "ground truth, all others are unlabelled. The round's models go to "
                    "DIR/checkpoints/round_<k> and its pseudo-labels into the project (status 'pseudo', ready for "
                    "review). Training warm-starts from the latest earlier round with the same network settings. "
                    "Like napari's Start button this (re)trains the current round; --next-round is napari's "
                    "'Next round' button. Options not given keep the project's stored settings (those of its last "
                    "training, from here or from napari) except --budget, --steps, --seed, --labels-only, "
                    "--chained-rounds and the device options, which always come from this command line.",
    )
    train.add_argument("project", metavar="DIR", help="project folder")
    _add_training_options(train)
    start = train.add_mutually_exclusive_group()
    start.add_argument("--next-round", action="store_true",
                       help="start the next round first (accepted corrections become ground truth), warm-started "
                            "from this one; a run refused, failed or stopped before its first step leaves the "
                            "round as it was")
    start.add_argument("--resume", action="store_true",
                       help="continue the stopped run of the current round (from its last.pt)")
    train.set_defaults(handler=_cmd_project_train)

    pretrain = actions.add_parser(
        "pretrain", parents=[common], help="pretrain the teacher without labels (stage 1), e.g. while labelling",
        description="Stage 1 of the method on every image of the project: the teacher learns by cycle consistency "
                    "(noise-corrupted image reconstruction), no label needed. Each run continues the pretraining "
                    "already done (checkpoints/pretrain); 'diffseg project train' then co-trains round 1 from this "
                    "teacher instead of pretraining inside its own budget. napari's Train panel runs the same in "
                    "the background while you label.",
    )
    pretrain.add_argument("project", metavar="DIR", help="project folder")
    pretrain.add_argument("--budget", type=_budget, default=300.0, metavar="SECONDS",
                          help="pretraining time of this run, default 300 (added to what was done before)")
    pretrain.add_argument("--seed", type=_setting("seed"), default=0, metavar="N", help="random seed (default 0)")
    pretrain.add_argument("--width", type=_setting("base_channels"), default=None, metavar="C",
                          help="base channels of the U-Nets (default 16; must match the later training)")
    _add_device_options(pretrain)
    pretrain.set_defaults(handler=_cmd_project_pretrain)

    status = actions.add_parser(
        "status", parents=[common], help="image counts per status, round, latest model and review queue",
        description="Print how many images are unlabelled, labelled, pseudo-labelled, accepted and rejected, the "
                    "current round, the latest model folder and the most uncertain pseudo-labels awaiting review.",
    )
    status.add_argument("project", metavar="DIR", help="project folder")
    status.add_argument("--top", type=_positive_int, default=10, metavar="N",
                        help="review-queue entries to show (default 10)")
    status.set_defaults(handler=_cmd_project_status)

    export = actions.add_parser(
        "export", parents=[common], help="write the current best mask of every image",
        description="Write <name>.tif (uint8) to FOLDER for every image that has a mask: the ground truth of "
                    "labelled and accepted images, the latest pseudo-label of the others. Rejected images and "
                    "images without any mask yet are skipped (and counted).",
    )
    export.add_argument("project", metavar="DIR", help="project folder")
    export.add_argument("--out", required=True, metavar="FOLDER", help="folder for the masks")
    _add_overwrite_option(export, "FOLDER holds a file with a mask's name stem (any extension or case; also the "
                                  "masks of an earlier export, which the message names), or FOLDER is or contains "
                                  "the folder the project's images or labels came from. A name in the manifest that "
                                  "is not a plain file name is always refused")
    export.set_defaults(handler=_cmd_project_export)


