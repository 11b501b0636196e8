/**
 * The files of one image folder (firmware-images/README.md, "Layout"). Fixed
 * names rather than names inside the manifest: the manifest then needs no
 * path field that could point elsewhere, and a folder is recognised as an
 * image folder by what it holds.
 */
export const MANIFEST_FILE = 'manifest.json';
/** The detached RSA signature over manifest.json, raw bytes (as `openssl dgst -sign` writes). */
export const SIGNATURE_FILE = 'manifest.sig';
/** The signer certificate, then any intermediates, PEM. The root may be left out: it is trusted only as configured on the gateway. */
export const SIGNER_FILE = 'signer.pem';
export const IMAGE_FILE = 'image.bin';

export const IMAGE_FOLDER_FILES: readonly string[] = [MANIFEST_FILE, SIGNATURE_FILE, SIGNER_FILE, IMAGE_FILE];
