"""`python -m iprm generate`: N sampled responses per problem of a task, graded by the task, as training or
best-of-N data.

    python -m iprm generate --task iprm.tasks.maths.MathTask --task.path data/math500.jsonl \
        --model_path DIR --n 4 --output runs/gen.jsonl [--format official] [--chat_template true] ...
    python -m iprm generate ... --devices 8                 # 8 worker processes, one per GPU
    torchrun --nproc_per_node 8 -m iprm generate --config gen.yaml    # or under a launcher
    srun --ntasks 8 --gpus-per-task 1 python -m iprm generate ...

(Under torchrun, give the options in a `--config` file: torchrun reads an abbreviated `--n` as its own.)

Each problem's prompt is `task.prompt(problem, tokenizer, chat_template)`; each response is graded by
`task.extract_answer` and `task.grade` (one call per shard) and written with the un-templated instruction as
its prompt. The run works in shards (`iprm.generation.shards`), shared among workers by index
(`iprm.generation.workers`), so a killed run resumes where it stopped and any number of workers write what one
uninterrupted process would, byte for byte; the output and its manifest (`OUT.generate.json`: settings, the
step separator and chat-template flag training must agree with, counts, exact token counts, the output's
checksum) are written atomically at the end, and two runs on one output wait for each other. A run resumes
only with the same settings and the same checkpoint: its fingerprint (`iprm.generation.fingerprint`: its
files' sizes and digests), not its path.
"""

import hashlib
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from jsonargparse import ActionConfigFile, ArgumentParser

from iprm.errors import ConfigError, IPRMError, WriteError
from iprm.generation.backend import Sampling
from iprm.generation.fingerprint import fingerprint
from iprm.generation.job import BackendOptions, Job
from iprm.generation.manifest import lock_path, manifest_path, parts_path, read_manifest
from iprm.generation.outputs import Format, counts, write_manifest, write_output
from iprm.generation.shards import differences
from iprm.generation.vllm_backend import check_engine_settings
from iprm.generation.workers import launched_rank, spawn
from iprm.io import exclusive
from iprm.tasks.base import Task
from iprm.validate import check_model_path

log = logging.getLogger(__name__)
BackendName = Literal["transformers", "vllm"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]


def generate(
    task: Task,
    model_path: str,
    output: str,
    n: int = 4,
    format: Format = "records",
    chat_template: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    max_new_tokens: int = 512,
    batch_size: int = 16,
    seed: int = 0,
    problems_per_shard: int = 64,
    backend: BackendName = "transformers",
    device: str = "auto",
    dtype: Dtype = "auto",
    trust_remote_code: bool = False,
    source: str | None = None,
    devices: int = 1,
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.9,
    max_model_len: int | None = None,
) -> dict | None:
    """Sample `n` responses to every problem of `task` from the checkpoint at `model_path`, grade them with
    the task, and write them to `output`; return the manifest (None on a launched worker other than rank 0,
    which only writes its shards).

    Args:
        task: The problems, their prompts and their grading (an `iprm.tasks.base.Task` subclass).
        model_path: The checkpoint to sample from, and its tokenizer (a directory, or a hub id).
        output: The file to write: JSON lines of iprm records, or with `format` official a JSON list.
        n: Responses per problem.
        format: "records" (iprm's JSON lines) or "official" (the official JSON list of candidates).
        chat_template: Put each problem through the tokenizer's chat template (for instruct models); the
            records keep the bare instruction, so train with data.chat_template true as well.
        temperature: Sampling temperature; 0 decodes greedily.
        top_p: Nucleus sampling mass (1 keeps every token).
        top_k: Sample among the k most probable tokens (0 keeps every token).
        max_new_tokens: Longest response, in tokens.
        batch_size: Prompts per generate call (transformers backend).
        seed: Seed of the run; shard i samples with a seed drawn from (seed, i), whichever worker makes it.
        problems_per_shard: Problems per shard, the unit that is written, resumed and shared among workers.
        backend: "transformers" (batched model.generate) or "vllm" (needs vLLM installed).
        device: Where the transformers backend runs: "auto" (a GPU if visible), "cpu", "cuda", "cuda:1", ...;
            with several workers, "auto" and "cuda" give each worker its own GPU.
        dtype: Weights' dtype: "auto" (the checkpoint's), "float32", "bfloat16" or "float16".
        trust_remote_code: Let the checkpoint run its own modelling and tokenizer code.
        source: The records' source (default: the checkpoint directory's name).
        devices: Worker processes to start, one per device (GPU, or group of tensor_parallel_size GPUs; on
            CPUs they share the machine); under torchrun or srun leave it 1: the launcher's processes are
            the workers.
        tensor_parallel_size: GPUs one model is split across (vllm backend).
        gpu_memory_utilization: Fraction of each GPU's memory vLLM may use (vllm backend).
        max_model_len: Longest prompt plus response vLLM plans for (vllm backend; default: the checkpoint's).
    """
    sampling = Sampling(temperature, top_p, top_k, max_new_tokens)
    _check_counts(n, problems_per_shard, batch_size, devices)
    check_engine_settings(tensor_parallel_size, gpu_memory_utilization, max_model_len)
    rank, world_size, local_rank = launched_rank()
    if devices > 1 and world_size > 1:
        raise ConfigError(
            f"generate: --devices {devices} under a launcher of {world_size} processes: the launcher's "
            "processes are the workers; leave --devices 1"
        )
    if devices > 1 and device not in ("auto", "cuda", "cpu"):
        raise ConfigError(
            f"generate: --devices {devices} gives each worker its own device; --device "
            f"{device!r} names one: use auto, cuda or cpu"
        )
    if world_size > 1:
        log.info("generate: worker %d of %d (from the launcher's environment)", rank, world_size)
    check_model_path(model_path, "--model_path")
    output_path = Path(output)
    check_output(output_path)
    local = Path(model_path).expanduser()
    settings = {
        "task": f"{type(task).__module__}.{type(task).__qualname__}", "model": fingerprint(model_path),
        "n": n, "seed": seed, "temperature": temperature, "top_p": top_p, "top_k": top_k,
        "max_new_tokens": max_new_tokens, "batch_size": batch_size, "problems_per_shard": problems_per_shard,
        "separator": task.separator, "chat_template": chat_template, "backend": backend, "dtype": dtype,
    }  # fmt: skip
    written = {**settings, "format": format, "source": source or local.name or model_path}
    options = BackendOptions(
        backend, batch_size, device, dtype, trust_remote_code,
        tensor_parallel_size, gpu_memory_utilization, max_model_len,
    )  # fmt: skip
    job = Job(task, model_path, settings, sampling, options, parts_path(output_path))
    if world_size > 1 and rank > 0:  # a launched worker: its shards only; rank 0 merges
        if _finished(output_path, written) is None:
            job.run_worker(rank, world_size, local_rank)
        return None
    with exclusive(lock_path(output_path)):
        finished = _finished(output_path, written)
        if finished is not None:
            return finished
        chunks = job.chunks()
        if devices > 1:
            spawn(job, devices, tensor_parallel_size if backend == "vllm" else 1, job.parts)
        else:
            job.run_worker(rank, world_size, local_rank)
        rows = job.merged(chunks, wait_for=world_size)
        with _naming(output_path, job.parts):
            write_output(rows, output_path, format, written["source"])
            manifest = {
                "settings": written, "model_path": str(local.resolve()) if local.is_dir() else model_path,
                **counts(rows, sum(map(len, chunks))), "output": _checksum(output_path),
            }  # fmt: skip
            write_manifest(output_path, manifest)
        shutil.rmtree(job.parts, ignore_errors=True)
    log.info(
        "generate: %d responses to %d problems written to %s", len(rows), manifest["problems"], output_path
    )
    return manifest


def _check_counts(n: int, problems_per_shard: int, batch_size: int, devices: int) -> None:
    if min(n, problems_per_shard, batch_size, devices) < 1:
        raise ConfigError(
            f"generate: n, problems_per_shard, batch_size and devices must be at least 1; got {n}, "
            f"{problems_per_shard}, {batch_size}, {devices}"
        )


def check_output(output: Path) -> None:
    """Refuse, before any work, an output that could not be written: a directory, a file under a file, a
    directory without write permission, a name generate keeps for its own files."""
    if output.is_dir():
        raise ConfigError(f"--output {output} is a directory; name a file in it, e.g. {output / 'gen.jsonl'}")
    if output.name.endswith(".generate.json") or output.suffix == ".lock":
        raise ConfigError(
            f"--output {output}: that name is generate's own (manifest or lock); choose another"
        )
    ancestor = output.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"--output {output}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"--output {output}: no permission to write in {ancestor}")


@contextmanager
def _naming(output: Path, parts: Path) -> Iterator[None]:
    """A failed write of the output (a full disk) as one line naming the path; the previous file is intact
    (writes are atomic) and the shards are kept, so a rerun only merges."""
    try:
        yield
    except OSError as error:
        # `iprm.io.atomic_write` already names the path (a WriteError); a bare OSError gets it here.
        named = isinstance(error, WriteError)
        what = str(error) if named else f"cannot write {error.filename or output}: {error.strerror or error}"
        raise IPRMError(
            f"generate: {what}; the previous file, if any, is intact and the samples are kept in {parts}: "
            "free space and rerun to finish"
        ) from error


def _checksum(path: Path) -> dict:
    data = path.read_bytes()
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _finished(output: Path, written: dict) -> dict | None:
    """The manifest of a finished run with these settings; refuses to overwrite another run's, a file
    `generate` did not write, or an output changed since."""
    if parts_path(output).exists() or not output.exists():
        return None  # under way (or never started): the shards decide
    manifest = read_manifest(output)
    rebuild = f"remove it and {manifest_path(output).name} and rerun generate to rebuild it"
    if manifest is None:
        raise ConfigError(
            f"{output} exists and was not written by generate; remove it or choose another --output"
        )
    if manifest["settings"] != written:
        raise ConfigError(
            f"{output} was generated with other settings ({differences(manifest['settings'], written)}); "
            "remove it and its .generate.json, or choose another --output"
        )
    if manifest.get("output") != _checksum(output):
        raise ConfigError(
            f"{output} does not match its manifest's size and SHA-256 (changed or cut short); {rebuild}"
        )
    log.info("generate: %s is already generated with these settings", output)
    return manifest


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m iprm generate",
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        env_prefix="IPRM_GENERATE",
        default_env=False,
    )
    parser.add_argument("--config", action=ActionConfigFile, help="A YAML file of these options.")
    parser.add_function_arguments(generate, as_group=False)
    return parser


def main(argv: list[str] | None = None) -> dict | None:
    parser = build_parser()
    config = parser.parse_args(argv)
    arguments = parser.instantiate_classes(config).as_dict()
    arguments.pop("config", None)
    manifest = generate(**arguments)
    if manifest is None:  # a launched worker other than rank 0: rank 0 reports
        return None
    print(
        f"{arguments['output']}: {manifest['responses']} responses to {manifest['problems']} problems, "
        f"{manifest['correct']} correct; {manifest['prompt_tokens']} prompt and "
        f"{manifest['sampled_tokens']} sampled tokens"
    )
    return manifest
