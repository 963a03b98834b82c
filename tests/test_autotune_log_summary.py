"""benchmarks/autotune_log_summary.py on a small log in XLA's format (text protobuf)."""
import gzip
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import autotune_log_summary as als  # noqa: E402

LOG = '''device: "abc"
per_backend_versions {
  key: "TRITON"
  value: "x"
}
instruction_profiles {
  hlo_fingerprint: "1"
  config_profiles {
    config {
      backend: CUDNN
      backend_config {
        algorithm {
          algo_id: 16
          workspace_size {
            value: 1
          }
        }
      }
    }
    run_time {
      seconds: 2
      nanos: 500000000
    }
  }
  config_profiles {
    config {
      backend: CUDNN
      backend_config {
        algorithm {
          algo_id: 19
        }
      }
    }
    run_time {
      nanos: 530000
    }
  }
  failed_configs {
    config {
      backend: CUDNN
    }
    kind: COMPILATION_FAILED
    message: "an unbalanced { and an escaped \\" in a message"
  }
  hlo_text: "%cudnn-conv-bw-filter.36 = (bf16[384,3,3,1]{3,2,1,0}, u8[0]{0}) custom-call(%a)"
}
instruction_profiles {
  hlo_fingerprint: "2"
  config_profiles {
    config {
      backend: TRITON
      backend_config {
        triton {
          block_m: 64
        }
      }
    }
    run_time {
      nanos: 150000
    }
  }
  config_profiles {
    config {
      backend: CUBLASLT_FISSION
    }
    run_time {
      nanos: 90000
    }
  }
  hlo_text: "%gemm_fusion_dot.1 = bf16[8,8]{1,0} fusion(%b), kind=kCustom"
}
'''


def test_counts_times_and_winners(tmp_path, capsys):
  path = tmp_path / "log.txt.gz"
  with gzip.open(path, "wt") as f:
    f.write(LOG)
  out = als.main([str(path), "--json", str(tmp_path / "s.json")])
  s = out[str(path)]
  assert s["instructions"] == 2
  assert s["candidates_per_backend"] == {"CUDNN": 2, "TRITON": 1, "CUBLASLT_FISSION": 1}
  assert s["failed_per_backend"] == {"CUDNN": 1}
  assert s["winners_per_backend"] == {"CUDNN": 1, "CUBLASLT_FISSION": 1}
  assert s["candidate_run_s_per_backend"]["CUDNN"] == 2.5005
  first = s["top_by_candidate_run_s"][0]
  assert first["name"] == "cudnn-conv-bw-filter.36" and first["best_ms"] == 0.53
  assert first["candidates"] == 2 and first["failed"] == 1
  assert json.load(open(tmp_path / "s.json"))[str(path)]["instructions"] == 2
  assert "2 instructions autotuned" in capsys.readouterr().out
