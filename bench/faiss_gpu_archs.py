"""Which NVIDIA GPUs can a FAISS wheel run on? The CUDA architectures its library embeds code for.

    python bench/faiss_gpu_archs.py faiss-gpu==1.15.1 faiss-gpu-cu12==1.14.1.post1  # downloads them
    python bench/faiss_gpu_archs.py path/to/faiss_gpu-*.whl

Reads the `.nv_fatbin` section of each `libfaiss*.so` in the wheel: `sass sm_XY` is native code for compute
capability X.Y (it runs on X.Y and later minors of major X), `ptx sm_XY` is code the driver can compile for
X.Y and anything newer. Hopper (H100, H200) is sm_90. No GPU needed.
"""

from __future__ import annotations

import argparse
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

FATBIN_MAGIC = 0xBA55ED50
PTX = 1


def elf_sections(data: bytes) -> Iterator[tuple[str, int, int]]:
    """(name, offset, size) of each section of a little-endian ELF64 file."""
    (table,) = struct.unpack_from("<Q", data, 0x28)
    entry_size, count, names_index = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, table + i * entry_size) for i in range(count)]
    names = data[headers[names_index][4] : headers[names_index][4] + headers[names_index][5]]
    for header in headers:
        yield names[header[0] : names.index(b"\0", header[0])].decode(), header[4], header[5]


def architectures(library: bytes) -> Counter[str]:
    """How many embedded kernel images there are per 'sass sm_XY' / 'ptx sm_XY'."""
    found: Counter[str] = Counter()
    for name, offset, size in elf_sections(library):
        if name != ".nv_fatbin":
            continue
        position, end = offset, offset + size
        while position + 16 <= end:
            magic, _, header_size, body_size = struct.unpack_from("<IHHQ", library, position)
            if magic != FATBIN_MAGIC:
                position += 8  # fatbins are 8-byte aligned
                continue
            part, stop = position + header_size, position + header_size + body_size
            while part < stop:
                kind, _, part_header, padded = struct.unpack_from("<HHII", library, part)
                (sm,) = struct.unpack_from("<I", library, part + 28)
                found[f"{'ptx' if kind == PTX else 'sass'} sm_{sm}"] += 1
                part += part_header + padded
            position = stop
    return found


def wheels(arguments: list[str], folder: Path) -> list[Path]:
    files = [Path(argument) for argument in arguments if argument.endswith(".whl")]
    requirements = [argument for argument in arguments if not argument.endswith(".whl")]
    if requirements:
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(folder)]
        subprocess.run([*pip, *requirements], check=True)
        files += sorted(folder.glob("*.whl"))
    return files


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("wheels", nargs="+", help="wheel files or requirements to download")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for wheel in wheels(args.wheels, Path(folder)):
            with zipfile.ZipFile(wheel) as archive:
                for member in archive.namelist():
                    if Path(member).name.startswith("libfaiss") and ".so" in Path(member).name:
                        found = architectures(archive.read(member))
                        listed = ", ".join(sorted(found)) or "no CUDA code"
                        print(f"{wheel.name}: {member}: {listed}")


if __name__ == "__main__":
    main()
