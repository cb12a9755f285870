"""What a pull or push can be asked for: the manifest formats and layer
compressions a push writes (each pair has its media type in upload.py's
`LAYER_MEDIA`) and how many layers a transfer moves at once by default.
Their one home, low in the package: the command line (command.py) offers
them without loading the transfer code, which every other command of the
CLI would then load at start-up."""

FORMATS = ("oci", "v2s2")
COMPRESSIONS = ("gzip", "none", "estargz")
DEFAULT_JOBS = 4
