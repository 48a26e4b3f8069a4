"""Models: the ViT backbone (`vit`), the MAE around it (`mae`), shared blocks (`layers`), the task heads (`heads`),
the tasks table (`tasks`), the fine-tuned multi-task model (`multitask`), what a checkpoint stores about it
(`spec`: `ModelSpec`), the checkpoint format and weight loading (`weights`), and for Meta's released Sapiens v1
weights `convert_sapiens` with the heads they need (`sapiens_v1`, head style "sapiens_v1")."""
