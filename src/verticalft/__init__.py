"""verticalft: curated data → CPT → QLoRA SFT → DPO → distilled students → serving cost, per vertical."""

import logging

__version__ = "0.1.0"

# bitsandbytes tries to fetch an optional CPU kernel from the Hub at import and warns when it
# cannot (always, offline); its built-in CPU path is used instead. Keep that out of every command.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
