"""Tunery training engine: Django-free fine-tuning with torch, transformers and peft."""
