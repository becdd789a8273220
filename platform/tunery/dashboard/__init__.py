"""Operator views inside the admin: per-job loss and metric curves, per-tenant usage, and which
vertical packs each tenant has switched on. Server-rendered (inline SVG, no JavaScript, no CDN),
so they work air-gapped."""
