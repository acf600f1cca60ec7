# rlhfkit on Intel Gaudi (HPU): Habana's PyTorch image plus this project's requirements.
#   make build                   # docker build -t rlhfkit-gaudi .
#   make run HF_TOKEN=<token>    # then, inside: cd trl; chmod +x ppo_pipeline_sanity.sh; ./ppo_pipeline_sanity.sh
#
# The base image is pinned by its path: Gaudi software release / OS / Habana's own torch build. Habana publishes
# one image per path and tags it :latest (its documented scheme); pass --build-arg BASE_TAG=<release>-<build>
# to pin the exact build as well. HF_TOKEN is never part of the image: `make run` passes it at run time only.
#
# OS: ubuntu24.04 (Python 3.12), not ubuntu22.04 (Python 3.10): transformers>=5.23 and trl>=1.16 need
# Python >= 3.11. Habana's torch for release 1.22 is 2.7.1, which transformers 5 accepts (it needs >= 2.6).
ARG GAUDI_VERSION=1.22.0
ARG OS=ubuntu24.04
ARG PYTORCH_VERSION=2.7.1
ARG BASE_TAG=latest
FROM vault.habana.ai/gaudi-docker/${GAUDI_VERSION}/${OS}/habanalabs/pytorch-installer-${PYTORCH_VERSION}:${BASE_TAG}

# The Python stack is requirements-hpu.txt: exact versions that belong together on this image (Gaudi software
# 1.22.0, Habana's torch 2.7.1, Python 3.12), checked on every CI run by `make hpu-check`.
# optimum-habana is NOT installed by default: its final release (1.21.2; end of support 2026-10-31) requires
# transformers>=4.55,<4.56 and accelerate<=1.10.1, while TRL 1.x needs transformers>=4.56.2. rlhfkit takes the
# Gaudi pieces of optimum-habana's GaudiTrainer (lazy-mode flushes, fused AdamW, fused clip norm, HPU graphs) from
# habana_frameworks directly (rlhfkit/hpu.py). WITH_OPTIMUM_HABANA=1 installs requirements-optimum-habana.txt
# into its own environment, /opt/optimum-habana (it sees the image's torch and habana_frameworks), for
# optimum-habana's own examples:
#   /opt/optimum-habana/bin/python <script>.py ...
ARG WITH_OPTIMUM_HABANA=0

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Habana installs its torch into the system Python, so the project's packages go there too (PEP 668 would
# otherwise refuse on Ubuntu 24.04).
ENV PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PT_HPU_LAZY_MODE=1 \
    HF_HOME=/workspace/.cache/huggingface \
    RLHFKIT_CACHE=/workspace/.cache/rlhfkit \
    PYTHON=python3 \
    PIPELINE_PROFILE=optimum-habana
# DL3064 flags any name containing "TOKEN": this one is the tokenizers library's fork switch, not a secret.
# hadolint ignore=DL3064
ENV TOKENIZERS_PARALLELISM=false

WORKDIR /workspace/trl

# Requirements first, so that editing the code does not reinstall them.
COPY requirements-hpu.txt requirements-optimum-habana.txt ./

# PIPELINE_PROFILE=optimum-habana: ./ppo_pipeline_sanity.sh runs optimum-habana's examples/trl commands
# (gemma-3-270m on stack-exchange-paired, bf16, lazy mode); PIPELINE_PROFILE=toy runs the offline toy pipeline.

# Keep the image's torch: /opt/rlhfkit/torch-constraints.txt pins the torch packages the image ships (torch,
# torchvision, torchaudio ...), requirements-hpu.txt never names torch, and the install fails if pip changed any
# of them anyway.
RUN mkdir -p /opt/rlhfkit \
    && python3 -m pip list --format=freeze | grep -iE '^torch[a-z_-]*==' > /opt/rlhfkit/torch-constraints.txt \
    && python3 -m pip install --no-cache-dir --constraint /opt/rlhfkit/torch-constraints.txt \
         --requirement requirements-hpu.txt \
    && if [ "$WITH_OPTIMUM_HABANA" = 1 ]; then \
         python3 -m venv --system-site-packages --without-pip /opt/optimum-habana \
         && python3 -m pip --python /opt/optimum-habana/bin/python install --no-cache-dir \
              --constraint /opt/rlhfkit/torch-constraints.txt --requirement requirements-optimum-habana.txt; \
       fi \
    && python3 -m pip list --format=freeze | grep -iE '^torch[a-z_-]*==' \
         | diff /opt/rlhfkit/torch-constraints.txt - \
    && python3 -c "import torch, transformers, trl, peft; print('torch', torch.__version__, '| transformers', transformers.__version__, '| trl', trl.__version__, '| peft', peft.__version__)"

# Any later `pip install` in the container keeps the image's torch too.
ENV PIP_CONSTRAINT=/opt/rlhfkit/torch-constraints.txt

COPY . /workspace/trl

# The build fails if a script does not import or answer --help on the installed stack (no card needed for that).
RUN for script in sft.py reward_modeling.py dpo.py kto.py ppo.py grpo.py rloo.py merge_peft_adapter.py \
        run_generation.py compare_base_vs_ppo.py; do python3 "$script" --help > /dev/null || exit 1; done

# The container starts in /workspace: the README's `cd trl` then finds the project.
WORKDIR /workspace
CMD ["/bin/bash"]
