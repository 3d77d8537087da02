"""The T2I release's text pipeline: Gemma-2-2b-it (transformers) -> 300 text states of width 2304.

Exactly the release's prompt handling (upstream t2i/inference.py; docs/conventions.md#numerics):
  * positive prompts get the 8-line "complex human instruction" (CHI) prefix, the user prompt appended
    right after its last line "User Prompt: "; the padded sequence is n_chi + 300 − 2 tokens long
    (n_chi counts BOS); the encoder runs over all of it, and BOS plus the *last 299* positions are kept;
  * the null / negative prompt has no prefix and no selection: 300 tokens, all kept;
  * padding is on the right and real: no attention mask reaches the network, so pad states are features;
  * the feature is Gemma's last hidden state after its final norm (the bare decoder's output).
Nothing is downloaded: the encoder is a local directory or a model id already in the local HF cache.
"""

import os
import re

import torch

from .errors import PixelDiTError

CHI_PROMPT = [
    'Given a user prompt, generate an "Enhanced prompt" that provides detailed visual descriptions suitable for image generation. Evaluate the level of detail in the user prompt:',
    "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, and spatial relationships to create vivid and concrete scenes.",
    "- If the prompt is already detailed, refine and enhance the existing details slightly without overcomplicating.",
    "Here are examples of how to transform or refine prompts:",
    "- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat curled up in a round shape, sleeping peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.",
    "- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring glowing street lamps, a diverse crowd of people in colorful clothing, and a double-decker bus passing by towering glass skyscrapers.",
    "Please generate only the enhanced description for the prompt below and avoid including any additional commentary or evaluations:",
    "User Prompt: ",
]


def quiet_transformers():
    """No download/loading progress bars from transformers: our commands print their own output (and JSON)."""
    try:
        from transformers.utils import logging as hf_logging  # noqa: PLC0415 (optional, heavy)

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def from_local_cache(model_id: str) -> str | None:
    """The local snapshot folder of a Hugging Face model id (`google/gemma-2-2b-it`), never downloading."""
    try:
        from huggingface_hub import snapshot_download  # noqa: PLC0415 (optional/heavy)
    except ImportError:
        return None
    try:
        return snapshot_download(repo_id=model_id, local_files_only=True)
    except Exception:  # not cached (LocalEntryNotFoundError), or not a valid repo id
        return None


def hub_cache_dir() -> str:
    try:
        from huggingface_hub import constants  # noqa: PLC0415 (optional/heavy)

        return str(constants.HF_HUB_CACHE)
    except ImportError:
        return "~/.cache/huggingface/hub"


def resolve_pretrained(what: str, path, hint: str) -> str:
    """A local folder, or the snapshot folder of a model id already in the local Hugging Face cache
    (local_files_only: nothing is ever downloaded). Cheap: a trainer checks its encoders with it before
    it builds anything."""
    path = str(path)
    if os.path.isdir(path):
        return path
    cached = from_local_cache(path)
    if cached is None:
        raise PixelDiTError(
            f"{what} {path!r} is neither a local folder nor in the Hugging Face cache ({hub_cache_dir()})",
            f"{hint} (nothing is downloaded)",
        )
    return cached


def load_pretrained(what: str, path, hint: str, load):
    """`load(folder, local_files_only=True)` for a local folder or a model id already in the local Hugging
    Face cache, without transformers' progress bars; errors are one line naming `what`."""
    path = resolve_pretrained(what, path, hint)
    quiet_transformers()
    try:
        return load(path, True)
    except (OSError, ValueError) as e:
        raise PixelDiTError(f"cannot load the {what} from {path}: {str(e).splitlines()[0]}") from None


def clean_prompt(prompt: str) -> str:
    """The release cuts anything from --aspect_ratio / --ar / --hw on, then strips whitespace."""
    return re.split(r"--aspect_ratio|--ar|--hw", prompt)[0].strip()


class TextEncoder:
    """encode(prompts) -> (B, L, D) with L = max_length; null(negative) -> (1, L, D), computed once."""

    def __init__(
        self,
        path,
        device="cpu",
        dtype=torch.float32,
        max_length: int = 300,
        expected_dim: int | None = None,
        system_prompt: list[str] | None = None,
        *,
        tokenizer=None,
        model=None,
    ):
        """From a local folder (`path`), or from a tokenizer and model already loaded (a diffusers pipeline's
        components: `path` None)."""
        if model is None or tokenizer is None:
            self.tokenizer, model = _load_encoder(path, dtype)
        else:
            self.tokenizer = tokenizer
        self.model = model.get_decoder() if hasattr(model, "get_decoder") and model.get_decoder() is not None else model
        self.model = self.model.to(device).eval().requires_grad_(False)
        self.tokenizer.padding_side = "right"
        self.dim = self.model.config.hidden_size
        if expected_dim is not None and expected_dim != self.dim:
            raise PixelDiTError(
                f"the text encoder gives {self.dim}-wide states but the checkpoint expects {expected_dim}",
                "use the encoder the checkpoint was trained with (Gemma-2-2b-it: 2304)",
            )
        if len(self.tokenizer) > self.model.config.vocab_size:
            raise PixelDiTError(
                f"tokenizer ({len(self.tokenizer)} tokens) and model (vocab {self.model.config.vocab_size}) do not match"
            )
        self.device, self.max_length = device, max_length
        self.chi = "\n".join(system_prompt if system_prompt is not None else CHI_PROMPT)
        self.n_chi = len(self.tokenizer.encode(self.chi))  # includes BOS
        self._null, self._cache = {}, {}
        self.truncated = []

    @torch.no_grad()
    def _states(self, texts, max_len):
        tok = self.tokenizer(texts, max_length=max_len, padding="max_length", truncation=True, return_tensors="pt")
        out = self.model(input_ids=tok.input_ids.to(self.device), attention_mask=tok.attention_mask.to(self.device))
        return out.last_hidden_state.float()

    def encode(self, prompts: list[str], cache: bool = True) -> torch.Tensor:
        """Positive prompts with the CHI prefix: BOS + the last max_length − 1 of n_chi + max_length − 2 states.

        cache=True keeps each prompt's states (sampling reuses a few prompts); training passes False, since
        every caption of a dataset would otherwise stay in memory (~2.8 MB each at 300 × 2304)."""
        prompts = [clean_prompt(p) for p in prompts]
        store = self._cache if cache else {}
        todo = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if todo:
            max_len = self.n_chi + self.max_length - 2
            full = [self.chi + p for p in todo]
            for p, f in zip(todo, full):
                if len(self.tokenizer.encode(f)) > max_len:
                    self.truncated.append(p)
            h = self._states(full, max_len)
            select = [0] + list(range(max_len - (self.max_length - 1), max_len))
            for p, e in zip(todo, h[:, select]):
                store[p] = e
        return torch.stack([self._cache[p] if p in self._cache else store[p] for p in prompts])

    def null(self, negative: str = "") -> torch.Tensor:
        """The unconditional embedding: the (negative) prompt alone, no prefix, all max_length states."""
        if negative not in self._null:
            self._null[negative] = self._states([negative], self.max_length)
        return self._null[negative]


def _load_encoder(path, dtype):
    try:
        from transformers import AutoModel, AutoTokenizer  # noqa: PLC0415 (optional, heavy)
    except ImportError:
        raise PixelDiTError("the text encoder needs transformers", "pip install 'pixeldit[text]'") from None

    def load(path, local):
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local)
        try:
            return tokenizer, AutoModel.from_pretrained(path, local_files_only=local, dtype=dtype)
        except TypeError:  # transformers < 4.56 names it torch_dtype
            return tokenizer, AutoModel.from_pretrained(path, local_files_only=local, torch_dtype=dtype)

    return load_pretrained("text encoder", path, "pass --text-encoder DIR with Gemma-2-2b-it", load)


def text_encoder(path: str, mcfg, device, why: str) -> TextEncoder:
    """The Gemma-2 encoder a T2I checkpoint needs (`why` names the command), one line when none was given."""
    if not path:
        raise PixelDiTError(f"{why} needs the Gemma-2 text encoder", "pass --text-encoder DIR (gemma-2-2b-it)")
    return TextEncoder(path, device=device, max_length=mcfg.text_len, expected_dim=mcfg.text_dim)
