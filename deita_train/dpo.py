"""Direct preference optimisation of the SFT model on UltraFeedback pairs (DEITA-7B-v1.0).

    accelerate launch --config_file accelerate_configs/zero3.yaml -m deita_train.dpo \\
        --config recipes/mistral-7b/dpo/deita-6k-ultrafeedback-10k.yaml [--key value ...]
    python -m deita_train.dpo --config recipes/tiny/dpo.yaml          # one device, e.g. CPU

TRL's DPOTrainer underneath. The pairs use the SFT template (`prompt` ends with "ASSISTANT:",
`chosen`/`rejected` are " " + reply + "</s>"), unlike the original whose DPO prompt used lowercase
`user:`/`assistant:`. The policy starts from the SFT checkpoint and the reference is a frozen copy
of it (or `ref_model_name_or_path`; with `use_peft`, the model with its adapter disabled).
`precompute_ref_log_probs: true` computes the reference log-probs once and frees the reference.
The training config is built before any model is loaded, as DeepSpeed ZeRO-3 requires.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trl import DPOTrainer, ModelConfig

from deita_train.config import parse_config, setup_logging
from deita_train.training import (
    DeitaDPOConfig,
    DPOScriptArguments,
    RunResult,
    load_tokenizer,
    model_init_kwargs,
    prepare_dpo_data,
    prepare_run,
    quantization_and_peft,
    resolve_model_path,
    run_config,
    skip_deepspeed_cpu_shm_kernel,
    train_and_save,
    trainer_callbacks,
)


def parse_args(args: Sequence[str] | None = None) -> tuple[DPOScriptArguments, DeitaDPOConfig, ModelConfig]:
    """`--config recipe.yaml` plus `--key value` overrides; unknown keys are an error."""
    return parse_config(DPOScriptArguments, DeitaDPOConfig, ModelConfig, args=args)


def build_trainer(
    script_args: DPOScriptArguments,
    training_args: DeitaDPOConfig,
    model_args: ModelConfig,
    callbacks: Sequence[Any] | None = None,
) -> DPOTrainer:
    """Check the launch, prepare the pairs, and build the DPOTrainer (config first, then the models)."""
    import torch
    from transformers import AutoModelForCausalLM

    prepare_run(training_args)
    model_path = resolve_model_path(model_args.model_name_or_path, training_args)
    tokenizer = load_tokenizer(model_path, model_args, training_args.trust_remote_code)
    train_dataset, eval_dataset, report, _ = prepare_dpo_data(script_args, tokenizer, training_args)
    quantization, peft_config = quantization_and_peft(model_args)
    training_args.model_init_kwargs = model_init_kwargs(model_args, training_args)
    ref_model = None
    if script_args.ref_model_name_or_path and peft_config is None:
        ref_path = resolve_model_path(script_args.ref_model_name_or_path, training_args)
        ref_kwargs = {k: v for k, v in training_args.model_init_kwargs.items() if k != "device_map"}
        if ref_kwargs.get("dtype") not in (None, "auto"):
            ref_kwargs["dtype"] = getattr(torch, ref_kwargs["dtype"])
        ref_model = AutoModelForCausalLM.from_pretrained(ref_path, **ref_kwargs).eval().requires_grad_(False)
    trainer = DPOTrainer(
        model=model_path,
        ref_model=ref_model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        quantization_config=quantization,
        callbacks=trainer_callbacks(training_args, callbacks),
    )
    trainer.deita_report = report
    return trainer


def run(
    script_args: DPOScriptArguments,
    training_args: DeitaDPOConfig,
    model_args: ModelConfig,
    callbacks: Sequence[Any] | None = None,
) -> RunResult:
    trainer = build_trainer(script_args, training_args, model_args, callbacks)
    config = run_config(script_args, training_args, model_args)
    return train_and_save(trainer, trainer.processing_class, training_args, trainer.deita_report, "dpo", config)


def main(args: Sequence[str] | None = None) -> RunResult:
    """Entry point for `python -m deita_train.dpo` and `deita-dpo`; callable in-process with a list of arguments."""
    setup_logging()
    skip_deepspeed_cpu_shm_kernel()
    return run(*parse_args(args))


def cli() -> None:
    """Console-script entry point (`deita-dpo`): like `main`, with exit status 0 on success."""
    main()


if __name__ == "__main__":
    main()
