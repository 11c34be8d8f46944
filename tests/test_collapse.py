"""Collapse detection: trivial validation predictions per task format (from what the metrics count), the
warning after two such validations in a row (once), the message at the end of fit, and the CLI's default
``CollapseDetector`` on a run forced to collapse and on a learning run."""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import pytest
import torch
from conftest import data_files_arg, run_cli
from lightning.pytorch import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.parsing import AttributeDict

from lit_prompts.tasks import ClozeClassification, HeadClassification, SpanQa, TextClassification, TextNer, TokenNer
from lit_prompts.training.collapse import CollapseDetector, CollapseWarning

LABELS = ["negative", "positive"]
TAGS = ["O", "B-PER", "I-PER", "B-LOC"]


def one_hot_scores(predicted: list[int], classes: int = 2) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(predicted), classes).float()


@pytest.mark.parametrize("fmt", [HeadClassification(LABELS, 8), ClozeClassification(LABELS, [5, 6]), TextClassification(LABELS)],
                         ids=["head", "cloze", "text_to_text"])
def test_classification_is_trivial_when_one_class_is_predicted_or_accuracy_is_at_chance(fmt):
    metrics = fmt.metrics().clone(prefix="val/")
    metrics.update(one_hot_scores([1, 1, 1]), torch.tensor([0, 1, 0]))
    metrics.update(one_hot_scores([1, 1]), torch.tensor([1, 1]))  # over batches, as validation counts them
    assert fmt.trivial_predictions(metrics) == "predicted 'positive' for all 5 validation examples"
    metrics.update(one_hot_scores([0]), torch.tensor([1]))  # another class predicted, but right no more often
    assert fmt.trivial_predictions(metrics) == ("was right for 3 of 6 validation examples, no more than predicting "
                                                "'positive' for every example would be (4)")
    metrics.update(one_hot_scores([0, 0]), torch.tensor([0, 0]))  # 5 of 8 right: better than 'positive' (4)
    assert fmt.trivial_predictions(metrics) is None
    metrics.reset()
    metrics.update(one_hot_scores([1, 1]), torch.tensor([1, 1]))  # the labels are one class themselves
    assert fmt.trivial_predictions(metrics) is None
    metrics.reset()
    assert fmt.trivial_predictions(metrics) is None  # nothing seen
    assert set(metrics.compute()) == {"val/accuracy", "val/macro_f1"}, "nothing more is logged"


@pytest.mark.parametrize("fmt", [TokenNer(TAGS, 8), TextNer(TAGS)], ids=["token", "text_to_text"])
def test_ner_is_trivial_when_no_entity_is_predicted(fmt):
    gold = [["B-PER", "I-PER", "O"], ["O", "B-LOC"], ["O"]]
    metrics = fmt.metrics().clone(prefix="val/")
    metrics.update([["O"] * len(g) for g in gold], gold)
    assert fmt.trivial_predictions(metrics) == "predicted no entity (every tag 'O') in all 3 validation sentences, which hold 2 entities"
    metrics.update([["O", "B-PER"]], [["O", "O"]])  # a wrong entity is still an entity
    assert fmt.trivial_predictions(metrics) is None
    metrics.reset()
    metrics.update([["O"]], [["O"]])  # no gold entity either
    assert fmt.trivial_predictions(metrics) is None
    assert set(metrics.compute()) == {"val/precision", "val/recall", "val/f1"}


def squad_update(metrics, answers: list[str], gold: list[str]) -> None:
    ids = [f"q{i}" for i in range(len(answers))]
    metrics.update([{"prediction_text": a, "id": i} for a, i in zip(answers, ids)],
                   [{"answers": {"text": [g], "answer_start": [0]}, "id": i} for g, i in zip(gold, ids)])


def test_qa_is_trivial_when_every_answer_is_empty_or_the_same():
    fmt = SpanQa(["start", "end"], 8)
    metrics = fmt.metrics().clone(prefix="val/")
    squad_update(metrics, ["", " ", ""], ["paris", "john", "paris"])
    assert fmt.trivial_predictions(metrics) == "answered nothing (an empty answer) to all 3 validation questions"
    metrics.reset()
    squad_update(metrics, ["the", "the"], ["paris", "john"])
    squad_update(metrics, ["the "], ["london"])
    assert fmt.trivial_predictions(metrics) == "gave the same answer to all 3 validation questions"
    squad_update(metrics, ["paris"], ["paris"])
    assert fmt.trivial_predictions(metrics) is None
    metrics.reset()
    squad_update(metrics, ["paris", "paris"], ["paris", "paris"])  # the same answer is right every time
    assert fmt.trivial_predictions(metrics) is None
    metrics.reset()
    squad_update(metrics, ["paris", "john"], ["paris", "john"])
    assert fmt.trivial_predictions(metrics) is None
    assert {k: round(v.item(), 2) for k, v in metrics.compute().items()} == {"val/exact_match": 100.0, "val/f1": 100.0}


class Run:
    """A stand-in for a fit's trainer and method, enough for the detector's hooks: validations are run by
    updating the method's metrics, calling the hooks in Lightning's order, and resetting as the method does."""

    def __init__(self, formats: dict, multitask: bool = False, **hparams):
        self.trainer = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.FITTING), sanity_checking=False, is_global_zero=True,
                                       callback_metrics={}, global_step=0, current_epoch=0,
                                       optimizers=[torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.03)])
        prefix = (lambda stage, task: f"{stage}/{task}/") if multitask else (lambda stage, task: f"{stage}/")
        self.module = SimpleNamespace(formats=formats, is_multitask=multitask, metric_prefix=prefix, hparams=AttributeDict(hparams),
                                      val_metrics={n: f.metrics().clone(prefix=prefix("val", n)) for n, f in formats.items()})

    def validate(self, detector: CollapseDetector, updates: dict, sanity: bool = False) -> None:
        self.trainer.sanity_checking = sanity
        for task, (predictions, targets) in updates.items():
            self.module.val_metrics[task].update(predictions, targets)
        detector.on_validation_epoch_end(self.trainer, self.module)
        for metrics in self.module.val_metrics.values():
            self.trainer.callback_metrics.update(metrics.compute())
            metrics.reset()
        detector.on_validation_end(self.trainer, self.module)
        if not sanity:
            self.trainer.global_step += 4
            self.trainer.current_epoch += 1


ALL_POSITIVE = (one_hot_scores([1, 1, 1, 1]), torch.tensor([0, 1, 0, 1]))
MIXED = (one_hot_scores([0, 1, 1, 1]), torch.tensor([0, 1, 0, 1]))


def test_warns_once_after_two_trivial_validations_in_a_row_and_again_when_fit_ends(capsys):
    run, detector = Run({"classification": HeadClassification(LABELS, 8)}, init="vocab"), CollapseDetector()
    detector.on_fit_start(run.trainer, run.module)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run.validate(detector, {"classification": ALL_POSITIVE}, sanity=True)  # the sanity check does not count
        run.validate(detector, {"classification": ALL_POSITIVE})
        run.validate(detector, {"classification": MIXED})  # the streak is broken
        run.validate(detector, {"classification": ALL_POSITIVE})
        assert not caught
        run.validate(detector, {"classification": ALL_POSITIVE})  # two in a row, at global step 12
        run.validate(detector, {"classification": ALL_POSITIVE})  # three: no second warning
    (warning,) = [w for w in caught if issubclass(w.category, CollapseWarning)]
    message = str(warning.message)
    assert message.startswith("collapse: val/accuracy = 0.5000 at global step 12 (epoch 3): the model predicted 'positive' "
                              "for all 4 validation examples, in 2 validations in a row: it is not learning the task.")
    assert "--model.optimizer.lr, now 0.03" in message and "another initialisation (--model.init, now 'vocab')" in message
    assert "--collapse.enabled false" in message
    detector.on_fit_end(run.trainer, run.module)
    err = capsys.readouterr().err
    assert "WARNING: collapse: val/accuracy = 0.5000 at global step 16 (epoch 4)" in err and "in 3 validations in a row" in err


def test_a_run_that_recovers_ends_quietly_and_a_switched_off_detector_never_warns(capsys):
    for detector, updates in ((CollapseDetector(), [ALL_POSITIVE, ALL_POSITIVE, MIXED]),
                              (CollapseDetector(enabled=False), [ALL_POSITIVE] * 3)):
        run = Run({"classification": HeadClassification(LABELS, 8)})
        detector.on_fit_start(run.trainer, run.module)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for update in updates:
                run.validate(detector, {"classification": update})
        assert len(caught) == (1 if detector.enabled else 0)
        detector.on_fit_end(run.trainer, run.module)
        assert "collapse" not in capsys.readouterr().err


def test_each_task_of_a_multitask_run_is_judged_alone():
    formats = {"sentiment": HeadClassification(LABELS, 8), "entities": TokenNer(TAGS, 8)}
    run, detector = Run(formats, multitask=True, reparameterize=True), CollapseDetector()
    gold = [["B-PER", "O"], ["O", "B-LOC"]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            run.validate(detector, {"sentiment": MIXED, "entities": ([["O", "O"], ["O", "O"]], gold)})
    (warning,) = caught
    assert str(warning.message).startswith("collapse: task 'entities': val/entities/f1 = 0.0000 at global step 4")
    assert "--model.reparameterize false" in str(warning.message)
    assert set(detector.collapsed) == {"entities"}


# --- through the CLI ---------------------------------------------------------------------------------


class MajorityHead(Callback):
    """Sets every task head to give ``label`` whatever the input (zero weights, a large bias) as fit starts:
    with a learning rate of (nearly) zero, the run stays collapsed."""

    def __init__(self, label: str = "positive"):
        self.label = label

    def on_fit_start(self, trainer, pl_module) -> None:
        with torch.no_grad():
            for fmt in pl_module.formats.values():
                linear = fmt.head[-1]
                linear.weight.zero_(), linear.bias.zero_()
                linear.bias[fmt.label_names.index(self.label)] = 10.0


def collapsing(label: str) -> list[str]:
    # lr 0 is refused ("a zero rate trains nothing, silently"): 1e-9 moves nothing within two epochs.
    head = json.dumps([{"class_path": f"{__name__}.MajorityHead", "init_args": {"label": label}}])
    return ["--model.optimizer=AdamW", "--model.optimizer.lr=1e-9", f"--trainer.callbacks={head}"]


def review_args(backbone: str, reviews: dict, *extra: str) -> list[str]:
    return ["--model=PromptTuning", f"--model.backbone={backbone}", "--model.num_virtual_tokens=3", "--model.pooling=mean",
            "--data.batch_size=8", data_files_arg(reviews, ("train", "validation")), "--trainer.max_epochs=2",
            "--seed_everything=0", *extra]


def test_a_run_forced_to_collapse_is_named_with_its_metric_and_step(tiny_backbone, reviews, tmp_path, capsys):
    args = review_args(tiny_backbone("distilbert"), reviews, *collapsing("positive"))
    with pytest.warns(CollapseWarning) as caught:
        run_cli("fit", *args, root=tmp_path / "on")
    (message,) = [str(w.message) for w in caught if issubclass(w.category, CollapseWarning)]
    # 32 training examples in batches of 8: validations at steps 4 and 8.
    assert message.startswith("collapse: val/accuracy = 0.5000 at global step 8 (epoch 1): the model predicted 'positive' "
                              "for all 16 validation examples, in 2 validations in a row")
    assert "--model.optimizer.lr, now 1e-09" in message and "(--model.init random or text or labels, now 'vocab')" in message
    assert f"WARNING: {message}" in capsys.readouterr().err  # printed again when fit ends

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_cli("fit", *args, "--collapse.enabled=false", root=tmp_path / "off")
    assert not [w for w in caught if issubclass(w.category, CollapseWarning)]
    assert "collapse" not in capsys.readouterr().err


def test_a_learning_run_is_not_called_collapsed(tiny_backbone, reviews, tmp_path, capsys):
    args = review_args(tiny_backbone("distilbert"), reviews, "--model.optimizer=AdamW", "--model.optimizer.lr=0.03")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = run_cli("fit", *args, root=tmp_path)
    assert not [w for w in caught if issubclass(w.category, CollapseWarning)]
    assert "collapse" not in capsys.readouterr().err
    assert cli.trainer.callback_metrics["val/accuracy"] > 0.5


def test_an_ner_run_forced_to_predict_only_o_is_named(tiny_backbone, ner_files, tmp_path, capsys):
    files = json.dumps({"train": ner_files["train"], "validation": ner_files["validation"]})
    args = ["--model=PromptTuning", f"--model.backbone={tiny_backbone('distilbert')}", "--model.num_virtual_tokens=2",
            "--data.task=ner", "--data.task_format=token", "--data.batch_size=8", f"--data.data_files={files}",
            "--trainer.max_epochs=2", *collapsing("O")]
    with pytest.warns(CollapseWarning, match=r"collapse: val/f1 = 0\.0000 at global step 8 \(epoch 1\): the model predicted no "
                                             r"entity \(every tag 'O'\) in all 16 validation sentences"):
        run_cli("fit", *args, root=tmp_path)
    assert "WARNING: collapse: val/f1" in capsys.readouterr().err
