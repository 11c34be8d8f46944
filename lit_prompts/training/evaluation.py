"""Checks of the data against the prompt, and metric logging at the end of an evaluation."""

from __future__ import annotations

import torch


class EvaluationHooks:
    """Mixed into ``PromptMethod``; expects ``formats``, ``val_metrics``, ``test_metrics``, ``prompt``."""

    def metric_prefix(self, stage: str, task: str) -> str:
        return f"{stage}/{task}/" if self.is_multitask else f"{stage}/"

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule if self.trainer is not None else None
        # A multi-task data module holds one single-task module per task: check each.
        modules = getattr(datamodule, "modules", None) or ({"": datamodule} if datamodule is not None else {})
        for name, module in modules.items():
            self.check_data(module, f"data.init_args.tasks.{name}" if name else "data.init_args")

    def check_data(self, datamodule, where: str) -> None:
        """The data fits the prompt: template virtual tokens, and text plus prompt within the positions."""
        limit = getattr(self.backbone.model.config, "max_position_embeddings", None)
        in_template = getattr(datamodule, "template_virtual_tokens", 0)
        fills = getattr(self.prompt, "template_length", 0)
        if in_template and in_template != fills:
            raise ValueError(
                f"{where}.template has {in_template} virtual tokens ([P:n]); {type(self).__name__} fills {fills}"
                + (f" (P-tuning: set model.init_args.num_virtual_tokens={in_template})" if fills else
                   " (PTuning fills them; other methods need a template without [P:n])")
            )
        prompt_length = self.prompt_length()
        if limit and datamodule.hparams.max_length + prompt_length > limit:
            raise ValueError(
                f"{where}.max_length={datamodule.hparams.max_length} plus {prompt_length} virtual tokens "
                f"exceeds the {limit} positions of {self.fingerprint['name']!r}: lower max_length"
            )

    def log_metrics(self, collections, stage: str) -> None:
        """Each task's metrics (gathered from every process by ``compute``); with several tasks also
        the macro average of their monitored metrics on a 0-1 scale, to pick checkpoints by."""
        values, monitored = {}, []
        for name, collection in collections.items():
            if not any(m.update_called for m in collection.values()):
                continue  # no data for this task in this stage
            computed = collection.compute()
            values.update(computed)
            if self.is_multitask:
                fmt = self.formats[name]
                monitored.append((f"{stage}/{name}/{fmt.monitor.split('/', 1)[1]}", fmt.monitor_scale))
            collection.reset()
        if not values:
            return
        values = self.finite_or_nan(values)
        self.log_dict(values, prog_bar=not self.is_multitask, rank_zero_only=False)
        if monitored:
            macro = torch.stack([values[key].float() * scale for key, scale in monitored]).mean()
            self.log(f"{stage}/macro", macro, prog_bar=True, rank_zero_only=False)

    def on_validation_epoch_end(self) -> None:
        self.log_metrics(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:
        self.log_metrics(self.test_metrics, "test")
