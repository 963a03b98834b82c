"""Ops: scan orders, the selective scan and the multi-direction scan, the depthwise conv (the
bottom layer)."""
from localmamba_jax.ops.depthwise_conv import depthwise_conv2d
from localmamba_jax.ops.multi_direction import gather_tokens, merge_tokens, multi_direction_selective_scan
from localmamba_jax.ops.scan_orders import (ALL_CHOICES, PAD, ScanOrder, StackedScanOrders,
                                            canonical_sort_key, parse_direction, scan_order,
                                            stacked_scan_orders)
from localmamba_jax.ops.selective_scan import IMPLEMENTATIONS, selective_scan
