"""Pull and push images through OCI Distribution registries.

The modules, bottom up (their levels are in `layers.LEVELS`):

- `errors`: the registry kinds of `LayersError`.
- `reference`: `[REGISTRY/]REPOSITORY[:TAG][@DIGEST]`, normalized as docker does.
- `auth`: `WWW-Authenticate` challenges, token answers, Basic headers (pure).
- `credentials`: user and password for a registry, from the files podman and
  docker write (auth.json, config.json) or their credential helpers.
- `regconf`: a `registries.conf` (mirrors, insecure and blocked registries).
- `parallel`: run a bounded number of calls on threads; the first failure
  stops the rest.
- `client`: one registry endpoint over httpx: TLS, authentication, retries
  with back-off, manifests, blobs (streamed, resumed with Range), uploads,
  cross-repository mounts.
- `blobinfo`: what we learned about blobs (compression, diffID, which
  repositories hold them), so a push can skip or mount instead of upload.
- `remote`: a reference → an `ImageSource` (manifest, index with a platform
  choice, config), its layers streamed from the registry on demand.
- `upload`: the push side: blobs the registry lacks, then the manifest.
- `session`: options, mirrors and endpoints: opens what `remote`/`upload` use.
- `command`: the `pull` and `push` subcommands of the CLI.

`layers/ingest.py` owns the rest of a pull: which layers are missing, the
extraction (the one `import` uses), publishing and records.
"""
