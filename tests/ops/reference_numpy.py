"""An independent float64 numpy implementation of the selective scan, for the tests.

Written straight from the recurrence (reference doc Sec. 7), one time step at a time, so it
shares no code with the implementations it checks. Layout as ops.selective_scan:
u/delta/z [b, L, d], A [d, N], B/C [b, L, G, N], D/delta_bias [d].
"""
import numpy as np


def softplus(x):
  return np.logaddexp(x, 0.0)


def selective_scan_float64(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                           delta_softplus=False):
  u, delta, A, B, C = (np.asarray(a, np.float64) for a in (u, delta, A, B, C))
  batch, length, channels = u.shape
  groups = B.shape[2]
  group_of = np.arange(channels) // (channels // groups)
  if delta_bias is not None:
    delta = delta + np.asarray(delta_bias, np.float64)
  if delta_softplus:
    delta = softplus(delta)
  state = np.zeros((batch, channels, A.shape[1]))
  out = np.empty((batch, length, channels))
  for t in range(length):
    b_t, c_t = B[:, t, group_of], C[:, t, group_of]                  # [b, d, N]
    state = np.exp(delta[:, t, :, None] * A) * state + (delta[:, t] * u[:, t])[..., None] * b_t
    out[:, t] = np.sum(state * c_t, axis=-1)
  if D is not None:
    out = out + u * np.asarray(D, np.float64)
  if z is not None:
    z = np.asarray(z, np.float64)
    out = out * z / (1.0 + np.exp(-z))
  return out, state
