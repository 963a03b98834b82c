#!/usr/bin/env bash
# Session 18 call 8 (one H200): call 3's Nsight Compute run again (stage-3 plain shape, batch
# 16, bf16), now that the plain-order lanes backward runs under the 168-register cap by
# default (call 3 ran it uncapped). The same commands as s18call3.sh.
exec bash "$(dirname "$0")/s18call3.sh"
