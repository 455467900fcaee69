"""Evaluation hooks: MT-Bench (FastChat's judge prompts and file schemas) and AlpacaEval (the alpaca_eval package).

Submodules, imported on demand so that judging never pulls in torch and generation never pulls in pandas:

* `deita_train.evaluation.mt_bench`: question/reference/judge-prompt files, judging through the project's
  LLM client (resumable, failures kept and counted), aggregation, radar plot, and the demo hook.
* `deita_train.evaluation.generation`: answers from a checkpoint with its own chat template (HF `generate`,
  or vLLM when installed), written in FastChat's `model_answer` schema or alpaca_eval's `model_outputs.json`.
* `deita_train.evaluation.alpaca`: annotator configs pointing at any OpenAI-compatible endpoint, running
  `alpaca_eval.evaluate`, and the win-rate metric itself.
"""
