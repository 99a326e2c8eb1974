"""What the extraction and fit tests share: an extraction that kills its own process, a manifest's records."""

# A child process that extracts with HuBERT's forward replaced: it ends its own process, as the kernel's OOM killer
# does under a cgroup's memory limit (SIGKILL, no Python error), on any input longer than a limit.
_DYING_EXTRACTION = """
import json, os, signal, sys
from transformers import HubertModel
from simslm.units.extract import ExtractConfig, extract_units
limit, config = int(sys.argv[1]), json.loads(sys.argv[2])
forward = HubertModel.forward
def dying(self, input_values, *args, **kwargs):
    if input_values.shape[1] > limit:
        os.kill(os.getpid(), signal.SIGKILL)
    return forward(self, input_values, *args, **kwargs)
HubertModel.forward = dying
extract_units(ExtractConfig(**config))
"""


def _manifest_records(manifest):
    from pathlib import Path

    from simslm.speech.manifest import read_manifest

    return [{"id": u.id, "path": str(u.audio_path(Path(manifest).parent))} for u in read_manifest(manifest)]

