"""Associative recall: can a model use its context? MQAR (``mqar``) and its training and scoring
at the query positions (``training``); ``resnetbk.bench.recall`` runs the benchmark."""
