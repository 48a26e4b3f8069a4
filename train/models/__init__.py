"""Models: the ViT backbone (`vit.py`), the MAE around it (`mae.py`), shared blocks (`layers.py`), and
`convert_sapiens.py` for Meta's released weights."""
