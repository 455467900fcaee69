"""Supervised fine-tuning: chat models on Deita data (vicuna_v1.1) and the complexity / quality scorers.

    accelerate launch --config_file accelerate_configs/zero2.yaml -m deita_train.sft \\
        --config recipes/mistral-7b/sft/deita-6k.yaml [--key value ...]
    python -m deita_train.sft --config recipes/tiny/sft.yaml          # one device, e.g. CPU

TRL's SFTTrainer underneath. The data is tokenized by the project (`deita_train.training`): the
loss covers each assistant reply and its `</s>` (chat) or the score digit alone (scorer), padding
is on the right, and `packing: true` packs without cross-attention between samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trl import ModelConfig, SFTTrainer

from deita_train.config import parse_config, setup_logging
from deita_train.training import (
    DeitaSFTConfig,
    RunResult,
    SFTScriptArguments,
    load_tokenizer,
    model_init_kwargs,
    prepare_run,
    prepare_sft_data,
    quantization_and_peft,
    resolve_model_path,
    run_config,
    skip_deepspeed_cpu_shm_kernel,
    train_and_save,
    trainer_callbacks,
)


def parse_args(args: Sequence[str] | None = None) -> tuple[SFTScriptArguments, DeitaSFTConfig, ModelConfig]:
    """`--config recipe.yaml` plus `--key value` overrides; unknown keys are an error."""
    return parse_config(SFTScriptArguments, DeitaSFTConfig, ModelConfig, args=args)


def build_trainer(
    script_args: SFTScriptArguments,
    training_args: DeitaSFTConfig,
    model_args: ModelConfig,
    callbacks: Sequence[Any] | None = None,
) -> SFTTrainer:
    """Check the launch, prepare the data, and build the SFTTrainer (the config exists before the model loads)."""
    prepare_run(training_args)
    model_path = resolve_model_path(model_args.model_name_or_path, training_args)
    tokenizer = load_tokenizer(model_path, model_args, training_args.trust_remote_code)
    train_dataset, eval_dataset, report, _ = prepare_sft_data(script_args, tokenizer, training_args)
    quantization, peft_config = quantization_and_peft(model_args)
    training_args.model_init_kwargs = model_init_kwargs(model_args, training_args)
    trainer = SFTTrainer(
        model=model_path,
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
    script_args: SFTScriptArguments,
    training_args: DeitaSFTConfig,
    model_args: ModelConfig,
    callbacks: Sequence[Any] | None = None,
) -> RunResult:
    trainer = build_trainer(script_args, training_args, model_args, callbacks)
    step = "sft-scorer" if script_args.task == "scorer" else "sft"
    config = run_config(script_args, training_args, model_args)
    return train_and_save(trainer, trainer.processing_class, training_args, trainer.deita_report, step, config)


def main(args: Sequence[str] | None = None) -> RunResult:
    """Entry point for `python -m deita_train.sft` and `deita-sft`; callable in-process with a list of arguments."""
    setup_logging()
    skip_deepspeed_cpu_shm_kernel()
    return run(*parse_args(args))


def cli() -> None:
    """Console-script entry point (`deita-sft`): like `main`, with exit status 0 on success."""
    main()


if __name__ == "__main__":
    main()
