"""Models: the ViT backbone (`vit`), the MAE around it (`mae`), shared blocks (`layers`), the task heads (`heads`),
the tasks table (`tasks`), the fine-tuned multi-task model (`multitask`), what a checkpoint stores about it
(`spec`: `ModelSpec`), the checkpoint format and weight loading (`weights`), and for Meta's released Sapiens v1
weights `convert_sapiens` with the heads they need (`sapiens_v1`, head style "sapiens_v1"). Backbone families
(`backbones`): the ViT, and Sapiens2 (`sapiens2`, transformers' reference modules, with its heads as head style
"sapiens2"); `convert_sapiens2` reads Sapiens2 save_pretrained folders."""
