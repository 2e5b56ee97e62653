"""Model loading: a .gguf is converted once into a cached transformers folder."""

import torch

from cd_fast.models import model_source


def test_a_gguf_is_converted_once_into_the_folder_later_loads_read(smollm2_path, smollm2):
    """The real SmolLM2 .gguf (converted by the session's first load): later uses read its
    folder without converting again, and the folder holds exactly the weights transformers
    reads from the .gguf itself."""
    from transformers import AutoModelForCausalLM

    folder, options = model_source(smollm2_path)
    assert options == {} and (folder / "config.json").is_file()
    assert (folder / "tokenizer.json").is_file() and folder.name.startswith(smollm2_path.stem)
    weights = folder / "model.safetensors"
    written = weights.stat().st_mtime_ns
    assert model_source(smollm2_path)[0] == folder and weights.stat().st_mtime_ns == written

    direct = AutoModelForCausalLM.from_pretrained(
        smollm2_path.parent, gguf_file=smollm2_path.name, dtype=torch.float32
    ).state_dict()
    cached = smollm2[0].state_dict()
    assert direct.keys() == cached.keys()
    assert all(torch.equal(direct[name], cached[name]) for name in direct)
