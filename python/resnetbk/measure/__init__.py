"""Measurement beside training: peak memory, the causality probe, the context reach, the per-step
log and the environment of a run (the FLOPs tracer is ``resnetbk.flops``). Nothing here depends
on the loop or the methods: it reads models and writes figures."""
