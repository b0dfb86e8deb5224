"""A checkpoint's fingerprint: what `generate` compares before it resumes, instead of the checkpoint's path.

The fingerprint of a local checkpoint directory is a SHA-256 over every file in it that can change what the
model samples (weights, configs, tokenizer files; not READMEs or hidden files), each entry its relative name,
its size and the digest of its bytes. A file up to `FULL_DIGEST_BYTES` is read whole; a larger weight file
is read in `SAMPLED_BLOCKS` blocks of `BLOCK_BYTES` spread evenly from its first to its last byte, plus its
size (16 MiB per large file, so a 140 GB checkpoint costs reading about 0.5 GB, not 140), while weights that
were swapped, retrained or truncated still change it (every trained tensor differs everywhere, and a
safetensors header names every tensor's offsets). `generate`'s own manifests (`*.generate.json`), should an
output be written into the checkpoint's directory, are not part of it. A hub id is fingerprinted by its name
only (nothing local to read).
"""

import hashlib
from pathlib import Path

FULL_DIGEST_BYTES = 64 * 2**20
BLOCK_BYTES = 2**20
SAMPLED_BLOCKS = 16
# What a checkpoint directory holds that shapes its samples; anything else (READMEs, logs) may change freely.
SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".model", ".txt", ".tiktoken", ".py", ".jinja")


def file_digest(path: Path) -> str:
    """SHA-256 of the whole file when small, else of its size and evenly spread blocks."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as file:
        if size <= FULL_DIGEST_BYTES:
            for block in iter(lambda: file.read(BLOCK_BYTES), b""):
                digest.update(block)
        else:
            digest.update(f"sampled:{size}".encode())
            step = (size - BLOCK_BYTES) / (SAMPLED_BLOCKS - 1)
            for k in range(SAMPLED_BLOCKS):
                file.seek(round(k * step))
                digest.update(file.read(BLOCK_BYTES))
    return digest.hexdigest()


def fingerprint(model_path: str) -> str:
    """The checkpoint's fingerprint (`sha256:` of its files' names, sizes and digests; `hub:<id>` for a hub
    id)."""
    directory = Path(model_path).expanduser()
    if not directory.is_dir():
        return f"hub:{model_path}"
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        hidden = any(part.startswith(".") for part in relative.parts)
        ours = path.name.endswith(".generate.json")
        if path.is_file() and not hidden and not ours and path.suffix in SUFFIXES:
            digest.update(f"{relative.as_posix()}\0{path.stat().st_size}\0{file_digest(path)}\n".encode())
    return f"sha256:{digest.hexdigest()}"
