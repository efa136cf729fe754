"""Binary assets under `static/`: inline and URL uploads, downloads, listing, MIME sniffing."""
