/**
 * Firmware images for meters (issue 9): signed manifests, verification on
 * load and before every send, quarantine of bad images, and the
 * compatibility rules between a meter's communication-module and metrology
 * firmware. Format and rules: firmware-images/README.md.
 *
 * Rollouts (rollout.ts) take meters to wanted versions in a rolling
 * sequence, journaled in LevelDB; the meters fetch the images block-wise
 * from the mesh endpoint (src/mesh/firmware-resource.ts) when offered them
 * through a FirmwareMeterPort (src/mesh/firmware-port.ts).
 */
export { FirmwareError, type FirmwareErrorCode } from './errors.js';
export {
  canonicalManifestBytes,
  canonicalManifestText,
  compareVersions,
  compatibleVersions,
  describeManifest,
  FIRMWARE_TARGETS,
  isFirmwareVersion,
  MANIFEST_FORMAT,
  MAX_MANIFEST_BYTES,
  otherTarget,
  parseManifest,
  validateManifest,
  type FirmwareManifest,
  type FirmwareTarget,
} from './manifest.js';
export { IMAGE_FILE, MANIFEST_FILE, SIGNATURE_FILE, SIGNER_FILE } from './layout.js';
export {
  MAX_SIGNER_CHAIN_CERTS,
  parseSignerChainPem,
  sha256Hex,
  verifyImage,
  verifyManifest,
  type FirmwareSigner,
  type VerifiedManifest,
  type VerifyManifestOptions,
} from './verify.js';
export {
  DEFAULT_MAX_IMAGE_BYTES,
  FirmwareRepository,
  MAX_FOLDER_DEPTH,
  openFirmwareRepository,
  type FirmwareImage,
  type FirmwareRepositoryOptions,
  type GoodFirmwareImage,
  type ImageToSend,
  type QuarantinedFirmwareImage,
} from './repository.js';
export {
  catalogOf,
  checkPair,
  checkUpdate,
  planUpdate,
  type CatalogImage,
  type FirmwareCatalog,
  type FirmwarePair,
  type MeterFirmwareState,
  type PairVerdict,
  type UpdatePlan,
  type UpdateStep,
  type WantedFirmware,
} from './compatibility.js';
export { createManifest, signImage, signManifestBytes, writeImageFolder, type ManifestFields, type SignedImage, type SignerCredentials } from './sign.js';
export * from './rollout-types.js';
export { ROLLOUT_SUBLEVEL, RolloutJournal, type FirmwareReport, type RolloutJournalOptions } from './rollout-journal.js';
export {
  FirmwareRolloutError,
  FirmwareRolloutService,
  imagePath,
  rolloutResultKey,
  type FirmwareRolloutErrorCode,
  type FirmwareRolloutServiceEvents,
  type FirmwareRolloutServiceOptions,
  type RolloutRequest,
} from './rollout.js';
