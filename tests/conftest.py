import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# tiny models gain nothing from threads, and threads thrash on a loaded 2-core machine
torch.set_num_threads(1)
