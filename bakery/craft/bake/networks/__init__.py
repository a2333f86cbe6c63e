"""Networks: LoRA and LyCORIS modules, and their kohya/A1111 files."""
