"""Models: the ViT backbone (`vit`), the MAE around it (`mae`), shared blocks (`layers`), the task heads (`heads`),
the tasks table (`tasks`), the fine-tuned multi-task model (`multitask`), what a checkpoint stores about it
(`spec`: `ModelSpec`), the checkpoint format and weight loading (`weights`), and `convert_sapiens` for Meta's
released weights. Backbone families (`backbones`): the ViT, and Sapiens2 (`sapiens2`, transformers' reference
modules, with its heads as head style "sapiens2"); `convert_sapiens2` reads Sapiens2 save_pretrained folders."""
