"""Nested-KVM test harness: boot an L1 VM under QEMU TCG with SVM and run a scenario in it."""
