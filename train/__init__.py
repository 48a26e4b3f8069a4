"""train: MAE pretraining and multi-task fine-tuning of the Sapiens ViT with DeepSpeed, on one GPU or hundreds.

Command: `hv train archs | pretrain | finetune | export-weights | convert-sapiens` (see `train.cli`,
`train.finetune_cli`). `pretrain` and `finetune` check the config, save it as `RUN/config.yaml` and start N ranks
through the `deepspeed` launcher (`train.launch`: `--gpus N`, `--cpus N`, `--hostfile FILE` or `--in-process`).
Loop: `train.engine.fit` is the one training loop: each rank's batches from its slot of the shards, a DeepSpeed
engine (ZeRO 0-3, bf16 or fp32), AdamW with a precomputed LR schedule, checkpoints under
`RUN/checkpoints/` with exact resume, `RUN/metrics.jsonl` and TensorBoard. `train.pretrain` (MAE on curated
images) and `train.finetune` (pose, seg, depth, normal heads, alone or together) are the per-rank entry points
that give it a model, a loss and batches.
Contract: reads `data_engine` shards (the sample contract). Writes `RUN/model.safetensors` at the end of
fine-tuning: fp32 weights whose header holds the `ModelSpec` and the resolved config, loaded by
`train.models.weights.load_finetuned` and `train.predictor.Predictor`; `hv train export-weights RUN` makes such
a file from any run's checkpoint (a pretrained backbone for `--init`). Other packages use `train.models` and
`train.predictor` only, never the entry points.

- `models`: the model package: the ViT backbone, the MAE, the task heads, the multi-task model, the tasks table
  (`TASKS`), `ModelSpec` and the checkpoint format; `convert_sapiens` for Meta's released weights.
- `engine` (with `distributed`, `ds_config`, `optim`, `checkpoints`): the loop; `launch` and `ports`: processes.
- `config` and `finetune_config`: the typed configs; `data_stream`, `data_pretrain`, `data_finetune` and
  `transforms`: shards -> batches; `losses`: the fine-tuning losses as pure functions.
- `predictor`: predictions from a checkpoint for eval, annotation and the demo; `export`: consolidated weights.
"""
