"""The table of refused inputs (tests/test_refusals.py runs it): each row is (entry point, arguments,
fragments of the one error line), arguments being strings or functions that build an input under
the row's fresh folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tiny_settings import TINY

from mtl.checkpoint import save_checkpoint
from mtl.configs import load_config

SPEC = "base: synthetic\nspace:\n  meta.inner_lr: {loguniform: [0.02, 0.5]}\n"
TRAINED = load_config("synthetic", TINY).to_dict()  # meta.way 5


def _write(name: str, content: str | bytes) -> Callable[[Path], str]:
    def make(tmp: Path) -> str:
        path = tmp / name
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
        return str(path)

    return make


def _space(space: str) -> Callable[[Path], str]:
    return _write("spec.yaml", f"base: synthetic\nspace:\n  {space}\n")


def _meta_checkpoint(tmp: Path) -> str:
    """A checkpoint of the right format and kind (what the refusals read before any weights)."""
    path = tmp / "meta_state.pt"
    save_checkpoint(path, {"kind": "meta", "config": TRAINED, "current": {}, "best_state": None, "epoch": 1})
    return str(path)


def _weights(way: int = 5) -> dict:
    """The weights of an untrained tiny meta-model as a checkpoint holds them (no data, no training)."""
    from mtl.models.backbones import create_backbone
    from mtl.models.head import HeadInit
    from mtl.models.scale_shift import meta_state, to_scale_shift

    torch.manual_seed(0)
    model = create_backbone("tiny")
    backbone = {k: v.clone() for k, v in model.state_dict().items()}
    to_scale_shift(model, "all", "kernel")
    head = HeadInit(way, model.out_dim).state_dict()
    return {"backbone": backbone, "current": {"model": meta_state(model), "head": head}}


def _checkpoint(config: object = TRAINED, nan: bool = False) -> Callable[[Path], str]:
    """A complete meta checkpoint of a 5-way tiny model under ``config`` (edited by hand, say); ``nan``:
    one weight of its head is NaN."""
    def make(tmp: Path) -> str:
        path = tmp / "meta_state.pt"
        weights = _weights()
        if nan:
            weights["current"]["head"]["weight"][0, 0] = float("nan")
        save_checkpoint(path, {"kind": "meta", "config": config, "best_state": None, "epoch": 1, **weights})
        return str(path)

    return make


def _support(tmp: Path) -> str:
    return str(_image_folders(tmp) / "train")  # two classes of two images


def _query(tmp: Path) -> str:
    return str(tmp / "imgs" / "test" / "c0" / "0.png")  # made by _support, which comes first


def _foreign_keys(tmp: Path) -> str:
    path = tmp / "foreign.pt"
    save_checkpoint(path, {"kind": "meta", "weights": torch.zeros(2), "step": 3})
    return str(path)


def _foreign_object(tmp: Path) -> str:
    path = tmp / "model.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, path)  # a whole module: weights-only loading refuses it
    return str(path)


def _image_folders(tmp: Path) -> Path:
    """ROOT/{train,val,test}/c0..c1/ with two 8 px PNGs each, and a symlink loop in train/c0."""
    root = tmp / "imgs"
    for split in ("train", "val", "test"):
        for c in ("c0", "c1"):
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / split / c / f"{i}.png")
    return root


def _symlink_loop(tmp: Path) -> str:
    root = _image_folders(tmp)
    (root / "train" / "c0" / "loop.png").symlink_to("loop.png")
    return f"data.root={root}"


def _resume_of(content: bytes) -> Callable[[Path], str]:
    def make(tmp: Path) -> str:
        (tmp / "o").mkdir()
        (tmp / "o" / "config.yaml").write_bytes(content)
        return str(tmp / "o")

    return make


def _bomb(levels: int = 9, width: int = 10) -> str:
    """A flow list of nested aliases: under 500 bytes that would expand to width ** levels items (10^9:
    gigabytes and minutes), so that only a refusal before any expansion passes."""
    parts = ["&a0 [" + ", ".join(["x"] * width) + "]"]
    parts += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


BOMB = _bomb()
DEEP = "[" * 5000 + "]" * 5000  # a list nested 5,000 levels deep (Python's stack holds about 1,000)
LONG = "[" + ", ".join(["x"] * 20_000) + "]"  # a 60 KB value: the line quotes its first 200 characters
ALIAS = ["YAML alias *a0 is refused", "expand to gigabytes", "write the value out in full"]
BINARY = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
LATIN1 = "meta:\n  way: 5  # caf\xe9\n".encode("latin-1")
DUPLICATE = "meta:\n  way: 5\n  way: 3\n"
TRAIN, EVALUATE, PREDICT, TUNE = "train", "evaluate", "predict", "tune"
THREE_WAY = {**TRAINED, "meta": {**TRAINED["meta"], "way": 3}}  # a hand-edited config: the head is 5-way

# case -> (entry point, its arguments (a callable builds a file under the case's folder and gives its
#          path or an argument), fragments the one line must hold)
CASES: dict[str, tuple[str, list, list[str]]] = {
    # 1. files that are not a YAML mapping
    "config-binary": (TRAIN, [_write("c.yaml", BINARY)], ["c.yaml is a binary file, not YAML text"]),
    "config-latin1": (TRAIN, [_write("c.yaml", LATIN1)], ["c.yaml is not UTF-8 text (byte 0xe9 at line 2)",
                                                          "save it as UTF-8"]),
    "config-empty": (TRAIN, [_write("c.yaml", "")], ["c.yaml is empty", "write at least one section"]),
    "config-comments-only": (TRAIN, [_write("c.yaml", "# nothing\n")], ["c.yaml is empty"]),
    "config-list": (TRAIN, [_write("c.yaml", "- meta\n- way\n")], ["must hold a mapping of sections, not a list"]),
    "config-scalar": (TRAIN, [_write("c.yaml", "5\n")], ["must hold a mapping of sections, not a int"]),
    "spec-binary": (TUNE, [_write("spec.yaml", BINARY)], ["spec.yaml is a binary file"]),
    "spec-latin1": (TUNE, [_write("spec.yaml", LATIN1)], ["spec.yaml is not UTF-8 text"]),
    "spec-empty": (TUNE, [_write("spec.yaml", "")], ["sweep spec file", "is empty", "search_spaces/smoke.yaml"]),
    "spec-list": (TUNE, [_write("spec.yaml", "- base\n")], ["sweep spec file", "not a list"]),
    "spec-scalar": (TUNE, [_write("spec.yaml", "smoke\n")], ["sweep spec file", "not a str"]),
    # 2. a key twice in one mapping
    "config-duplicate-key": (TRAIN, [_write("c.yaml", DUPLICATE)],
                             ["duplicate key 'way'", "at line 3 (first at line 2)", "keep one of them"]),
    "spec-duplicate-key": (TUNE, [_write("spec.yaml", SPEC + "  meta.inner_lr: {uniform: [0.1, 0.2]}\n")],
                           ["duplicate key 'meta.inner_lr'", "at line 4 (first at line 3)"]),
    "spec-duplicate-section": (TUNE, [_write("spec.yaml", "tune: {num_samples: 2}\n" + SPEC + "tune: {seed: 1}\n")],
                               ["duplicate key 'tune'", "at line 5 (first at line 1)"]),
    # 3. infinite and nan floats, in --set and in YAML, and as bounds of a space
    "inf-set": (TRAIN, ["synthetic", "--set", "meta.inner_lr=inf"], ["meta.inner_lr = inf must be a finite number"]),
    "dot-inf-set": (TRAIN, ["synthetic", "--set", "meta.inner_lr=.inf"], ["meta.inner_lr = inf must be a finite"]),
    "nan-set": (TRAIN, ["synthetic", "--set", "meta.inner_lr=nan"], ["meta.inner_lr = nan must be a finite"]),
    "overflow-set": (TRAIN, ["synthetic", "--set", "pretrain.lr=1e999"], ["pretrain.lr = inf must be a finite"]),
    "inf-in-yaml": (TRAIN, [_write("c.yaml", "meta: {lr_ss: .inf}\n")], ["meta.lr_ss = inf must be a finite"]),
    "nan-ratio": (TRAIN, ["synthetic", "--set", "hard_tasks.ratio=.nan"], ["hard_tasks.ratio = nan must be a fin"]),
    "nan-in-sweep-set": (TUNE, [_write("spec.yaml", SPEC), "--set", "meta.lr_head=nan"], ["meta.lr_head = nan"]),
    "inf-space-bound": (TUNE, [_space("meta.inner_lr: {uniform: [0.01, .inf]}")],
                        ["space meta.inner_lr", "finite numbers", "inf"]),
    "nan-space-bound": (TUNE, [_space("meta.inner_lr: {loguniform: [.nan, 0.5]}")], ["finite numbers", "nan"]),
    "inf-space-step": (TUNE, [_space("meta.inner_steps: {quniform: [2, 10, .inf]}")], ["finite numbers"]),
    "inf-space-choice": (TUNE, [_space("meta.inner_lr: {choice: [0.1, .inf]}")], ["choice values must be finite"]),
    # 4. resources
    "cpu-inf": (TUNE, [_write("spec.yaml", SPEC), "--set", "resources.cpu=.inf"], ["resources.cpu = inf", "finite"]),
    "cpu-beyond-machine": (TUNE, [_write("spec.yaml", SPEC), "--set", "resources.cpu=100000"],
                           ["resources.cpu = 100000 is more than this machine's", "CPUs", "--address"]),
    "gpu-inf": (TUNE, [_write("spec.yaml", SPEC), "--set", "resources.gpu=inf"], ["resources.gpu = inf", "finite"]),
    "gpu-negative": (TUNE, [_write("spec.yaml", SPEC), "--set", "resources.gpu=-1"], ["resources.gpu = -1", "(0, 1]"]),
    # 5. an empty sweep name
    "empty-name": (TUNE, [_write("spec.yaml", SPEC), "--set", "name="], ["empty sweep name", "--set name=spec-2"]),
    "empty-name-in-yaml": (TUNE, [_write("spec.yaml", "name: ''\n" + SPEC)], ["sweep name ''", "letters, digits"]),
    # 6. sizes that would crash or exhaust memory
    "threads-huge": (TRAIN, ["synthetic", "--set", "runtime.threads=100000"], ["runtime.threads = 100000",
                                                                              "must be in [1, 1024]"]),
    "image-size-huge": (TRAIN, ["synthetic", "--set", "data.image_size=100000"], ["data.image_size = 100000",
                                                                                 "must be in [16, 1024]"]),
    "threads-huge-in-sweep": (TUNE, [_space("runtime.threads: {choice: [1, 5000]}")],
                              ["space runtime.threads", "5000", "[1, 1024]"]),
    # 7. every named choice, in the config and in every value of a space
    "unknown-backbone": (TRAIN, ["synthetic", "--set", "model.backbone=resnet13"],
                         ["unknown backbone 'resnet13'", "did you mean resnet12", "choose one of resnet12, resnet25"]),
    "unknown-dataset": (TRAIN, ["synthetic", "--set", "data.dataset=minii"], ["unknown dataset 'minii'", "mini"]),
    "unknown-normalization": (TRAIN, [_write("c.yaml", "data: {normalization: imagenett}\n")],
                              ["unknown normalization 'imagenett'", "did you mean imagenet", "choose one of"]),
    "unknown-head-init": (TRAIN, ["synthetic", "--set", "meta.head_init=xavierr"], ["unknown head init 'xavierr'"]),
    "unknown-recipe": (TRAIN, ["synthetic", "--set", "pretrain.recipe=pf"], ["unknown pretraining recipe 'pf'"]),
    "unknown-backbone-sweep-set": (TUNE, [_write("spec.yaml", SPEC), "--set", "model.backbone=resnet13"],
                                   ["unknown backbone 'resnet13'"]),
    "unknown-choice-in-space": (TUNE, [_space("meta.head_init: {choice: [kaiming, xavierr]}")],
                                ["space meta.head_init", "unknown head init 'xavierr'", "choose one of"]),
    "unknown-recipe-in-space": (TUNE, [_space("pretrain.recipe: {choice: [pt, tf, pf]}")],
                                ["space pretrain.recipe", "unknown pretraining recipe 'pf'"]),
    # 7. a run refused after its data is read still leaves no out/config.yaml behind
    "missing-pretrain-checkpoint": (TRAIN, ["synthetic", "--set", "pretrain.checkpoint=/nonexistent/backbone.pt"],
                                    ["pretrain.checkpoint /nonexistent/backbone.pt does not exist"]),
    # 8. --resume of a run folder whose config.yaml is damaged
    "resume-garbage": (TRAIN, ["synthetic", "--resume", "--out", _resume_of(BINARY)],
                       ["cannot resume", "config.yaml is damaged", "binary file", "choose another --out"]),
    "resume-empty": (TRAIN, ["synthetic", "--resume", "--out", _resume_of(b"")], ["config.yaml is damaged", "empty"]),
    "resume-list": (TRAIN, ["synthetic", "--resume", "--out", _resume_of(b"- a\n")], ["damaged", "not a list"]),
    "resume-malformed": (TRAIN, ["synthetic", "--resume", "--out", _resume_of(b"meta: [1\n")],
                         ["damaged", "malformed YAML"]),
    # 9. evaluate: checkpoints that are not ours, a field the trained model fixes
    "checkpoint-foreign-keys": (EVALUATE, [_foreign_keys], ["not a complete mtl meta checkpoint",
                                                            "lacks config, current, best_state, epoch"]),
    "checkpoint-foreign-object": (EVALUATE, [_foreign_object],
                                  ["is corrupt or not an mtl checkpoint", "torch.nn.modules.linear.Linear",
                                   "loading it could run code"]),
    "evaluate-other-way": (EVALUATE, [_meta_checkpoint, "--set", "meta.way=3"],
                           ["meta.way = 3 differs from the checkpoint's 5", "drop --set meta.way"]),
    "evaluate-other-backbone": (EVALUATE, [_meta_checkpoint, "--set", "model.backbone=resnet12"],
                                ["model.backbone = 'resnet12' differs from the checkpoint's 'tiny'"]),
    # 10. a symlink loop in a class folder
    "symlink-loop": (TRAIN, ["synthetic", "--set", "data.dataset=folder", "--set", _symlink_loop, "--dry-run"],
                     ["train/c0/loop.png", "Too many levels of symbolic links", "fix or remove the link"]),
    # 11. YAML aliases and deep nesting (run as processes under a memory bound: see BOMBS), long values
    "alias-bomb-config": (TRAIN, [_write("c.yaml", f"data:\n  root: {BOMB}\n"), "--dry-run"],
                          [*ALIAS, "c.yaml at line 2"]),
    "alias-bomb-spec-config": (TUNE, [_write("spec.yaml", f"config:\n  data: {{root: {BOMB}}}\n{SPEC}")],
                               [*ALIAS, "spec.yaml at line 2"]),
    "alias-bomb-spec-name": (TUNE, [_write("spec.yaml", f"name: {BOMB}\n{SPEC}")], [*ALIAS, "spec.yaml at line 1"]),
    "alias-bomb-set": (TRAIN, ["synthetic", "--set", f"data.root={BOMB}", "--dry-run"],
                       [*ALIAS, "in --set data.root", "quote it if you meant the text"]),
    "alias-bomb-sweep-set": (TUNE, [_write("spec.yaml", SPEC), "--set", f"name={BOMB}"], [*ALIAS, "in --set name"]),
    "deep-nesting": (TRAIN, [_write("c.yaml", f"data:\n  root: {DEEP}\n"), "--dry-run"],
                     ["YAML nested more than 100 levels deep in", "c.yaml at line 2", "remove the extra nesting"]),
    "deep-nesting-set": (TRAIN, ["synthetic", "--set", f"data.root={DEEP}", "--dry-run"],
                         ["YAML nested more than 100 levels deep in --set data.root"]),
    "long-value": (TRAIN, ["synthetic", "--set", f"data.root={LONG}", "--dry-run"],
                   ["data.root must be a str, not ['x', 'x', ", "'x',... (list)"]),
    "long-name-in-yaml": (TUNE, [_write("spec.yaml", f"name: {'n' * 20_000}\n{SPEC}")],
                          ["sweep name 'nnnnnnnn", "is 20000 characters long", "at most 100"]),
    # 12. counts no real run reaches, and a single evaluation episode
    "meta-epochs-huge": (TRAIN, ["synthetic", "--set", "meta.epochs=100000000000000000000"],
                         ["meta.epochs = 100000000000000000000 must be in [1, 100000]", "no run needs more epochs"]),
    "lr-step-huge-float": (TRAIN, [_write("c.yaml", "meta: {lr_step: 1.0e+20}\n")],  # a file under TINY's --set
                           ["meta.lr_step = 1e+20 must be in [1, 100000000]"]),
    "pretrain-epochs-huge": (TRAIN, ["synthetic", "--set", "pretrain.epochs=1000000"], ["pretrain.epochs = 1000000"]),
    "batches-per-epoch-huge": (TRAIN, ["synthetic", "--set", "meta.batches_per_epoch=10000000"],
                               ["meta.batches_per_epoch = 10000000 must be in [1, 1000000]"]),
    "meta-inner-steps-huge": (TRAIN, ["synthetic", "--set", "meta.inner_steps=1000000"],
                              ["meta.inner_steps = 1000000 must be in [1, 100000]", "no run needs more steps"]),
    "eval-inner-steps-huge": (EVALUATE, [_meta_checkpoint, "--set", "eval.inner_steps=1000000000"],
                              ["eval.inner_steps = 1000000000 must be in [1, 100000]"]),
    "probe-steps-huge": (TRAIN, ["synthetic", "--set", "pretrain.probe_steps=1000000"],
                         ["pretrain.probe_steps = 1000000 must be in [1, 100000]"]),
    "episodes-huge": (EVALUATE, [_meta_checkpoint, "--set", "eval.episodes=10000000"],
                      ["eval.episodes = 10000000 must be in [2, 1000000]"]),
    "val-episodes-huge": (TRAIN, ["synthetic", "--set", "eval.val_episodes=10000000"], ["eval.val_episodes = 1000"]),
    "probe-episodes-huge": (TRAIN, ["synthetic", "--set", "pretrain.val_episodes=10000000"],
                            ["pretrain.val_episodes = 10000000 must be in [2, 1000000]"]),
    "batch-size-huge": (TRAIN, ["synthetic", "--set", "pretrain.batch_size=1000000"],
                        ["pretrain.batch_size = 1000000 must be in [1, 65536]", "no device holds a larger batch"]),
    "meta-batch-huge": (TRAIN, ["synthetic", "--set", "meta.meta_batch=1000000"], ["meta.meta_batch = 1000000"]),
    "batch-episodes-huge": (EVALUATE, [_meta_checkpoint, "--set", "eval.batch_episodes=1000000"],
                            ["eval.batch_episodes = 1000000 must be in [1, 65536]"]),
    "window-huge": (TRAIN, ["synthetic", "--set", "hard_tasks.window=10000000"], ["hard_tasks.window = 10000000"]),
    "meta-lr-step-huge": (TRAIN, ["synthetic", "--set", "meta.lr_step=1000000000"],
                          ["meta.lr_step = 1000000000 must be in [1, 100000000]"]),
    "pretrain-lr-step-huge": (TRAIN, ["synthetic", "--set", "pretrain.lr_step=1000000"], ["pretrain.lr_step = 10"]),
    "epochs-huge-in-space": (TUNE, [_space("meta.epochs: {int: [1, 100000000]}")],
                             ["space meta.epochs", "100000000", "must be in [1, 100000]"]),
    "one-episode": (EVALUATE, [_meta_checkpoint, "--set", "eval.episodes=1"],
                    ["eval.episodes = 1 must be in [2, ", "a 95% interval needs at least two episodes", "± 0.00"]),
    "one-val-episode": (TRAIN, ["synthetic", "--set", "eval.val_episodes=1"], ["eval.val_episodes = 1", "two epis"]),
    "one-probe-episode": (TRAIN, ["synthetic", "--set", "pretrain.val_episodes=1"], ["pretrain.val_episodes = 1"]),
    # 13. sweep names, the MLflow URI, a space of too many choices
    "name-too-long": (TUNE, [_write("spec.yaml", SPEC), "--set", "name=" + "n" * 300],
                      ["is 300 characters long", "give one of at most 100"]),
    "name-dot": (TUNE, [_write("spec.yaml", SPEC), "--set", "name=."],
                 ["sweep name '.' must start with a letter or digit", "--set name=sweep"]),
    "name-dash": (TUNE, [_write("spec.yaml", SPEC), "--set", "name=-rf"],
                  ["sweep name '-rf' must start with a letter or digit", "a '-' reads as an option", "--set name=rf"]),
    "name-slash": (TUNE, [_write("spec.yaml", SPEC), "--set", "name=a/b"],
                   ["sweep name 'a/b' may hold only letters, digits, '.', '_' and '-'"]),
    "tracking-uri-bare-word": (TUNE, [_write("spec.yaml", SPEC), "--set", "mlflow.tracking_uri=databricks"],
                               ["MLflow tracking URI 'databricks' is neither a URI with a scheme nor a path",
                                "sqlite:///<path>, http:// or https://"]),
    "choices-too-many": (TUNE, [_space("meta.inner_steps: {choice: [" + ", ".join(map(str, range(1, 10_001))) + "]}")],
                         ["space meta.inner_steps: choice lists 10000 values", "at most 200", "{int: [low, high]}"]),
    # 14. evaluate and predict: checkpoints edited by hand or holding bad weights, --out that cannot be written
    "checkpoint-config-str": (EVALUATE, [_checkpoint("meta: {way: 5}")],
                              ["meta_state.pt: its config is a str, not a mapping of sections",
                               "use the meta_state.pt a run or a sweep wrote, unedited"]),
    "checkpoint-config-invalid": (EVALUATE, [_checkpoint({"meta": {"way": "five"}})],
                                  ["meta_state.pt: its config does not validate (meta.way must be an int, not 'five'",
                                   "unedited"]),
    "checkpoint-weights-misfit": (EVALUATE, [_checkpoint(THREE_WAY)],
                                  ["meta_state.pt: its weights do not fit the model its config describes",
                                   "size mismatch for weight", "use the checkpoint as its run wrote it"]),
    "checkpoint-nan-weights": (EVALUATE, [_checkpoint(nan=True)],
                               ["meta_state.pt holds non-finite weights (current.head.weight has NaN or inf)",
                                "use the meta_state.pt of a run that did not diverge"]),
    "evaluate-out-folder": (EVALUATE, [_meta_checkpoint, "--out", lambda tmp: str(tmp)],
                            ["is a folder; name a file to write", "eval.json"]),
    "evaluate-out-under-file": (EVALUATE, [_meta_checkpoint, "--out", lambda t: str(t / "meta_state.pt" / "r.json")],
                                ["lies under", "meta_state.pt, which is a file, not a folder"]),
    "predict-config-str": (PREDICT, [_checkpoint("meta: {way: 5}"), "--support", _support, "--query", _query],
                           ["its config is a str, not a mapping of sections"]),
    "predict-weights-misfit": (PREDICT, [_checkpoint(THREE_WAY), "--support", _support, "--query", _query],
                               ["meta_state.pt: its weights do not fit the model its config describes"]),
    "predict-nan-weights": (PREDICT, [_checkpoint(nan=True), "--support", _support, "--query", _query],
                            ["holds non-finite weights (current.head.weight has NaN or inf)"]),
    "predict-out-folder": (PREDICT, [_meta_checkpoint, "--support", _support, "--query", _query,
                                     "--out", lambda tmp: str(tmp / "imgs")], ["imgs is a folder", "predictions.csv"]),
    # 15. validation queries: their bounds, and what the val split holds (TINY: 30 images per class; the
    # synthetic preset of a sweep: 60), under either protocol (paper takes Q = K for the test alone)
    "val-query-huge": (TRAIN, ["synthetic", "--set", "eval.val_query=1000000"],
                       ["eval.val_query = 1000000 must be in [1, 100000]", "no dataset's class holds 100,000 images"]),
    "val-query-zero": (TRAIN, ["synthetic", "--set", "eval.val_query=0"], ["eval.val_query = 0 must be in [1, 10", "needs a query per class"]),
    "val-query-over-val-split": (TRAIN, ["synthetic", "--set", "eval.val_query=40"],
                                 ["meta.shot + eval.val_query (1+40) = 41 images per class but a val class has only",
                                  " only 30; lower eval.val_query (validation queries per class) to at most 29"]),
    "val-query-over-val-split-paper": (TRAIN, ["synthetic", "--set", "eval.protocol=paper", "--set",
                                               "eval.val_query=30"],
                                       ["meta.shot + eval.val_query (1+30) = 31 images per class",
                                        "val class has only 30", "lower eval.val_query", "at most 29"]),
    "val-query-in-space": (TUNE, [_space("eval.val_query: {int: [5, 80]}")],
                           ["space eval.val_query: value 80 does not fit the data",
                            "meta.shot + eval.val_query (1+80) = 81 images per class but a val class has only 60",
                            "lower eval.val_query (validation queries per class) to at most 59"]),
}

# rows whose input would take gigabytes and minutes if expanded (or exhaust Python's stack): run as
# processes (test_bombs_are_refused_by_the_commands_in_bounded_memory), which a timeout can stop
BOMBS = {"alias-bomb-config", "alias-bomb-spec-config", "alias-bomb-spec-name", "alias-bomb-set",
           "alias-bomb-sweep-set", "deep-nesting", "deep-nesting-set"}


def _sets(items: list[str]) -> list[str]:
    return [a for s in items for a in ("--set", s)]


def _argv(case: str, tmp: Path) -> list[str]:
    entry, args, _ = CASES[case]
    built = [a(tmp) if callable(a) else a for a in args]
    if entry == TRAIN:  # the tiny sizes first (the row's own --set win): a row that is not refused ends soon
        return ["train", *_sets(TINY), *built, *([] if "--out" in built else ["--out", str(tmp / "out")])]
    if entry == EVALUATE:
        return ["evaluate", *built, *([] if "--out" in built else ["--out", str(tmp / "eval.json")])]
    if entry == PREDICT:
        return ["predict", *built, "--set", "runtime.device=cpu"]
    return [*built, "--storage", str(tmp / "results")]


