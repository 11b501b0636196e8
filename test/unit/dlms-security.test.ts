import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DlmsError, isDlmsError, type DlmsErrorCode } from '../../src/dlms/errors.js';
import { unwrapKey, wrapKey } from '../../src/dlms/keywrap.js';
import {
  AUTH_TAG_LENGTH,
  GENERAL_GLO_CIPHERING_TAG,
  GLO_TAG_BY_PLAIN_TAG,
  PLAIN_TAG_BY_GLO_TAG,
  decryptApdu,
  encryptApdu,
  gloTagFor,
  isCipheredApdu,
  parseCipheredApdu,
  parseSecurityControl,
  plainTagFor,
  securityControlByte,
  type CipheredApdu,
  type CipheredFraming,
  type SecurityPolicy,
} from '../../src/dlms/security.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

/** Runs `fn` and returns the DlmsError it throws; fails the test on anything else. */
function dlmsErrorOf(fn: () => unknown): DlmsError {
  try {
    fn();
  } catch (err) {
    if (isDlmsError(err)) return err;
    throw new Error(`expected a DlmsError, got ${String(err)}`);
  }
  throw new Error('expected a DlmsError, nothing was thrown');
}

function expectDlmsError(fn: () => unknown, code: DlmsErrorCode, offset?: number): DlmsError {
  const err = dlmsErrorOf(fn);
  expect(err.code).toBe(code);
  if (offset !== undefined) expect(err.offset).toBe(offset);
  return err;
}

// ---------------------------------------------------------------------------
// Published vectors
//
// DLMS UA 1000-2 (Green Book) Ed. 8, Table 40 "Example: glo-get-request xDLMS APDU":
// get-request-normal for the clock (class 8, 0.0.1.0.0.255, attribute 2),
// EK 000102..0F, AK D0D1..DF, system title 4D4D4D0000BC614E, IC 01234567.
// Where these were taken from (the Green Book itself is not public):
//   - ChitranshBaregama/EncryptionAlgorithm- dlms_test_vectors.py ("Green Book 8th Ed. official
//     test vectors (Table 40, Table 43)"): the expected 0x10 tag, 0x20 ciphertext and 0x30
//     ciphertext and tag, and how the complete APDUs are framed;
//   - u9n/dlms-cosem tests/test_xdlms/test_service_specific_cipher.py: the complete SC 0x30
//     APDU ("Example extracted from Table 40"); tests/test_security.py: its C || T.
// All three pass against node:crypto here.
const GB = {
  ek: hex('000102030405060708090A0B0C0D0E0F'),
  ak: hex('D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF'),
  systemTitle: hex('4D4D4D0000BC614E'),
  invocationCounter: 0x01234567,
  plaintext: hex('C0010000080000010000FF0200'),
};
const GB_KEYS = { ek: GB.ek, ak: GB.ak };
const GB_TABLE_40: ReadonlyArray<{ sc: number; security: SecurityPolicy; frame: string; ciphertext: string; tag?: string }> = [
  {
    sc: 0x30,
    security: 'authenticated-encrypted',
    frame: 'C81E3001234567411312FF935A47566827C467BC7D825C3BE4A77C3FCC056B6B',
    ciphertext: '411312FF935A47566827C467BC',
    tag: '7D825C3BE4A77C3FCC056B6B',
  },
  {
    sc: 0x10,
    security: 'authenticated',
    frame: 'C81E1001234567C0010000080000010000FF020006725D910F9221D263877516',
    ciphertext: 'C0010000080000010000FF0200',
    tag: '06725D910F9221D263877516',
  },
  {
    sc: 0x20,
    security: 'encrypted',
    frame: 'C8122001234567411312FF935A47566827C467BC',
    ciphertext: '411312FF935A47566827C467BC',
  },
];

// Green Book Ed. 8 glo-initiate-request example (authenticated encryption, same keys,
// system title and IC): xDLMS InitiateRequest with a dedicated key. The published
// frame is 21 30 | 30 01234567 | C | T; reproduced in u9n/dlms-cosem
// tests/test_xdlms/test_initiate.py (TestGlobalCipherInitiateRequest) and
// gvtret/gosem pkg/dlms/cipher_test.go. glo-initiate-request (0x21) lives in the
// AARQ, not among the service glo tags, so the test checks the ciphered content
// (SC | IC | C | T), which is the same whatever the framing.
const GB_INITIATE = {
  plaintext: hex('01011000112233445566778899AABBCCDDEEFF0000065F1F0400007E1F04B0'),
  content: hex('3001234567801302FF8A7874133D414CED25B42534D28DB0047720606B175BD52211BE6841DB204D39EE6FDB8E356855'),
};

// Green Book Ed. 8 Table 43 "HLS example using authentication-mechanism 5 with GMAC":
// GMAC = suite 0 authentication-only, AAD = SC || AK || challenge. f(StoC) uses the
// client's system title and IC, f(CtoS) the server's. Both expected tags are in
// ChitranshBaregama/EncryptionAlgorithm- dlms_test_vectors.py; f(StoC) also in
// u9n/dlms-cosem tests/test_security.py (test_gmac).
const GB_TABLE_43 = [
  {
    who: 'f(StoC), client',
    systemTitle: hex('4D4D4D0000000001'),
    invocationCounter: 1,
    challenge: hex('503677524A323146'),
    tag: hex('1A52FE7DD3E72748973C1E28'),
  },
  {
    who: 'f(CtoS), server',
    systemTitle: hex('4D4D4D0000BC614E'),
    invocationCounter: 0x01234567,
    challenge: hex('4B35366956616759'),
    tag: hex('FE1466AFB3DBCD4F9389E2B7'),
  },
];

// general-glo-ciphering with a system title: a data-notification frame from a meter,
// published in u9n/dlms-cosem tests/test_gen_glo_cipher.py (test_gen_glo_cipher_decrypt)
// and tests/test_general_global_cipher.py, EK = AK = ASCII "MYDUMMYGLOBALKEY",
// SC 0x30, IC 0x000001E5. The plaintext is the data-notification those files parse
// in test_data_notification_apdu.
const U9N_GENERAL_GLO = {
  frame: hex(
    'DB082F192291991641033B30000001E5025CE9D2271FD78BE8C204211A916A9D7F587E0A7A814CADEA89E9593F01F92EA8C087B5BDFDEFEAB6BECF282DFE49C08F5BE6DC8400',
  ),
  key: Buffer.from('MYDUMMYGLOBALKEY', 'latin1'),
  systemTitle: hex('2F19229199164103'),
  invocationCounter: 0x1e5,
  plaintext: hex('0F000001DB000922125A8591360000000049000000110000000A5A8513D014800000000D0000000A0100'),
};

// general-glo-ciphering with the system title omitted (length 0), as encoded by
// u9n/dlms-cosem test_gen_glo_cipher_with_no_system_title_encodes_correct
// (SC 0x30, IC 2147483857 = 0x800000D1). No keys are published for it: framing only.
const U9N_NO_TITLE_FRAME = hex('DB001E30800000D181EC9EC4BF53E9776EF0C453969FBDFE11BE9B791AACC0FF8C');

// chandangeek/Connexo_Code, upl/com.energyict.mdc.upl.impl/dlms/src/test/java/com/energyict/dlms/aso/
// SecurityContextTest.java (EnergyICT DLMS stack):
//  - logicalDataTransportDecryptionTest: the Table 40 APDU and keys with system title
//    4B414D1234567890 ("KAM" + 1234567890), all three security controls;
//  - realTimeTestAuthenticationTag: authentication-only get-request, system title
//    4B414D0000000051, IC 3709216955 (0xDD1628BB), its own EK and AK (the test checks the
//    bytes after the glo tag; the tag 0xC8 follows from the get-request inside);
//  - logicalDataDecryptionHugeFrame: an encryption-only glo-get-response of 1037 bytes
//    (two-byte length), system title 4B414D0000000009, key 43218765AABBCCDD55443322ABABCDCD,
//    and the get-response it decrypts to.
const KAM = hex('4B414D1234567890');
const CONNEXO: ReadonlyArray<{
  name: string;
  ek: Buffer;
  ak: Buffer;
  systemTitle: Buffer;
  invocationCounter: number;
  security: SecurityPolicy;
  plaintext: Buffer;
  frame: Buffer;
}> = [
  {
    name: 'KAM system title, SC 0x10',
    ek: GB_KEYS.ek,
    ak: GB_KEYS.ak,
    systemTitle: KAM,
    invocationCounter: 0x01234567,
    security: 'authenticated',
    plaintext: hex('C0010000080000010000FF0200'),
    frame: hex('C81E1001234567C0010000080000010000FF020003C51F733571866E675BF115'),
  },
  {
    name: 'KAM system title, SC 0x20',
    ek: GB_KEYS.ek,
    ak: GB_KEYS.ak,
    systemTitle: KAM,
    invocationCounter: 0x01234567,
    security: 'encrypted',
    plaintext: hex('C0010000080000010000FF0200'),
    frame: hex('C8122001234567D0BC0DE872E76D3F64CE312AB1'),
  },
  {
    name: 'KAM system title, SC 0x30',
    ek: GB_KEYS.ek,
    ak: GB_KEYS.ak,
    systemTitle: KAM,
    invocationCounter: 0x01234567,
    security: 'authenticated-encrypted',
    plaintext: hex('C0010000080000010000FF0200'),
    frame: hex('C81E3001234567D0BC0DE872E76D3F64CE312AB1475C7DC48AB69286B4E42664'),
  },
  {
    name: 'real-time authentication tag, SC 0x10',
    ek: hex('12348765AABBCCDD55443322ABABCDCD'),
    ak: hex('43218765AABBCCDD55443322ABABCDCD'),
    systemTitle: hex('4B414D0000000051'),
    invocationCounter: 3709216955,
    security: 'authenticated',
    plaintext: hex('C001C100010000600200FF0200'),
    frame: hex('C81E10DD1628BBC001C100010000600200FF020084E00541CCC73874C70B8F0C'),
  },
  {
    name: 'huge encrypted-only glo-get-response (0x82 length)',
    ek: hex('43218765AABBCCDD55443322ABABCDCD'),
    ak: Buffer.alloc(0),
    systemTitle: hex('4B414D0000000009'),
    invocationCounter: 0x2b,
    security: 'encrypted',
    plaintext: hex(
      [
        'c402c10000000001008203f8018200b00204120008110009060000010000ff0202010902030f0116030002030f0216030002030f031',
        '6030002030f0416030002030f0516030002030f0616030002030f0716030002030f0816030002030f09160300010602020f0103ff02020f0203ff02020f0303f',
        'f02020f0403ff02020f0503ff02020f0603ff020412001d110009060000020100ff0202010602030f0116030002030f0216030002030f0316030002030f04160',
        '30002030f0516030002030f06160300010002041200091100090600000a0000ff0202010202030f0116030002030f02160300010102020f0103ff02041200091',
        '100090600000a0064ff0202010202030f0116030002030f02160300010102020f0103ff02041200091100090600000a006aff0202010202030f0116030002030',
        'f02160300010102020f0103ff020412000b1100090600000b0000ff0202010202030f0116030002030f02160300010202020f0103ff02020f0203ff020412001',
        '41100090600000d0000ff0202010a02030f0116030002030f0216030002030f0316030002030f0416030002030f0516030002030f0616030002030f071603000',
        '2030f0816030002030f0916030002030f0a160300010102020f0103ff02041200161100090600000f0000ff0202010402030f0116030002030f0216030002030',
        'f0316030002030f04160300010002041200161100090600000f0001ff0202010402030f0116030002030f0216030002030f0316030002030f041603000100020',
        '41200161100090600000f0002ff0202010402030f0116030002030f0216030002030f0316030002030f0416030001000204120047110009060000110000ff020',
        '2010b02030f0116030002030f0216030002030f0316030002030f0416030002030f0516030002030f0616030002030f0716030002030f0816030002030f09160',
        '30002030f0a16030002030f0b16030001000204120007110109060000150000ff0202010802030f0116030002030f0216030002030f0316030002030f0416030',
        '002030f0516030002030f0616030002030f0716030002030f08160300010202020f0103ff02020f0203ff0204120019110009060000180000ff0202010502030',
        'f0116030002030f0216030002030f0316030002030f0416030002030f0516030001000204120029110009060000190000ff0202010602030f0116030002030f0',
        '216030002030f0316030002030f0416030002030f0516030002030f061603000100020412002a110009060000190100ff0202010a02030f0116030002030f021',
        '6030002030f0316030002030f0416030002030f0516030002030f0616030002030f0716030002030f0816030002030f0916030002030f0a160300010302020f0',
        '103ff02020f0203ff02020f0303ff',
      ].join(''),
    ),
    frame: hex(
      [
        'cc820409200000002b8983ff4da4e3a8cb6d5918c521f43556dd887e66e2ac3cb075c1e0b18ba0809d69e3b20381bd0b',
        '385b67e0da82ff71bb175ee951b3b5112c795ba46fac4253fd17d397ab1b84f27fc62e29808981778a908477c217445a0be778a71d21eb7014c0d759de1b7ff8',
        '6f7f250540fc85f68b65e88543cb912ed15a041995c87b4f8c63048fa8a0f439b1e1c26b07faa3d22018722f7220833330d2c7186c9c59ec20ad8800f2b7ba31',
        '91b67414eae838a4e84567e80d3b033db746e006c3edd768099d77ea9281940eba815ff13af7a5032e9d68e30854cbf40cabccc3ab585b166ffdcdd51fe8c932',
        '53ca7057d80c00a173f85bca6c33cbd77917bd1b0723458c09031b4a90df61223892bd232bb3c2d6eec1738e2cf5e634591c1cb69cee0cb33a7b32a3ef2ac0d3',
        '178b21a0d506474fba1a0cfb7f940af2a6f8b1c66da2f1537455d8dbb9315655aec13c27d5c88546c7da0754809783f8d8a3f076e5ac352c9e0530439517233a',
        '3d7cc9ddf5960ef11d0efc1b1e98b5082d023faa92d8c010cfaf676145f1f7639a14b3f7fadcc44ad409a96538994241f4d74ae08abc83f98812c4dec76af7d4',
        'f3e57f9ce5edbdd38f305d3a39cf5d846648a944e62ec5be6d747e71e5c3585aed7f3e029ad53f0074bfaacd343d8fcc1451df32cfe466bfe2910086752b93ef',
        '66b420fd64a7a5b5e50f48beca46e03555dd6e43bf2f03cecabbf7dae1fd13f597cbf6348a56b633504c99349841134fbe7be57563ddad3c1c86ae071978a00e',
        'c5290e9f91a6fa095c3c0263956c49136d7da9a01a6d51f7da2563106992bff97978063b6b54c9d9b0cf785fc1fea1c8112937023644a3fbaf7502e9f00722a4',
        '92f9ffe08e90d41ce547d946216acb750f91662b4fd37418b7a6d1f7bf19746cb19167970d10fa299d5b1bf6882e07da44f5fcdc368c7c813b0010bf36292e26',
        'de7eea0d8a132d6e33e620f06c18305133910551d4deca54e003d50cb616a650fb2601fec0db8bb393329693a762e8ed819da1f160a8926c5093843d0f624cee',
        '4b52e281d4292bf39ee9866a00a5b11eb089e7c2b54a771b96c89d13c7b9202e28eeed80e62077c80da09b182ac314b8981e61685cdaf203665821dcc2db4a38',
        'e3b0b1ab39f89379349f8e412482664e42a3b0e06c763df5f5d7d9605dbfbb9990bba8846ef338f1fa02f35a06d6ddbe341040e298fb594d4a30087a1383b20e',
        '3ccf6d68f3bf1dd2e8b52ff1170c6e69a961108a25b9a7dfaae6e1620fed285f138d952bb4a3ade3c6b259f00fc463905cc15712b168bee3d770ac2fe9fbe966',
        '87e6772ce041a2d0735b7cf8dc16222fd0cbdf81bf49c5f540e59530a61296a44825a60910c688ffcb10c000f33569db3ada6d257f457b2eaeffb3dea50ff45a',
        '5314534f81557c8e2a4ebee09d675ca7bb137933e1cee46418e42437ad',
      ].join(''),
    ),
  },
];

// ---------------------------------------------------------------------------

describe('security control byte', () => {
  it('decodes the suite, A, E, key set and compression bits', () => {
    expect(parseSecurityControl(0x30)).toEqual({ suite: 0, authentication: true, encryption: true, broadcastKey: false, compression: false });
    expect(parseSecurityControl(0x10)).toEqual({ suite: 0, authentication: true, encryption: false, broadcastKey: false, compression: false });
    expect(parseSecurityControl(0x20)).toEqual({ suite: 0, authentication: false, encryption: true, broadcastKey: false, compression: false });
    expect(parseSecurityControl(0x70)).toEqual({ suite: 0, authentication: true, encryption: true, broadcastKey: true, compression: false });
  });

  it('encodes what it decodes', () => {
    for (const byte of [0x10, 0x20, 0x30, 0x50, 0x60, 0x70]) {
      expect(securityControlByte(parseSecurityControl(byte))).toBe(byte);
    }
    expect(securityControlByte({ authentication: true, encryption: true })).toBe(0x30);
  });

  it('refuses other suites, compression and no protection', () => {
    expectDlmsError(() => parseSecurityControl(0x31), 'UNSUPPORTED');
    expectDlmsError(() => parseSecurityControl(0x32), 'UNSUPPORTED');
    expectDlmsError(() => parseSecurityControl(0xb0), 'UNSUPPORTED');
    expectDlmsError(() => parseSecurityControl(0x00), 'BAD_SECURITY');
    expectDlmsError(() => parseSecurityControl(0x40), 'BAD_SECURITY');
    expectDlmsError(() => securityControlByte({ suite: 1, authentication: true, encryption: true }), 'UNSUPPORTED');
    expectDlmsError(() => securityControlByte({ authentication: true, encryption: true, compression: true }), 'UNSUPPORTED');
    expectDlmsError(() => securityControlByte({ authentication: false, encryption: false }), 'BAD_SECURITY');
    for (const bad of [-1, 256, 1.5, Number.NaN]) expectDlmsError(() => parseSecurityControl(bad), 'BAD_VALUE');
  });

  it('classifies every byte: accepted bytes round-trip, the rest fail with the right code', () => {
    for (let byte = 0; byte <= 0xff; byte++) {
      const suite = byte & 0x0f;
      const expected: DlmsErrorCode | undefined =
        suite !== 0 || byte & 0x80 ? 'UNSUPPORTED' : (byte & 0x30) === 0 ? 'BAD_SECURITY' : undefined;
      if (expected === undefined) expect(securityControlByte(parseSecurityControl(byte))).toBe(byte);
      else expectDlmsError(() => parseSecurityControl(byte), expected);
    }
  });
});

describe('glo tags', () => {
  it('maps each plain service tag to its glo tag and back', () => {
    const pairs = [
      [0xc0, 0xc8],
      [0xc1, 0xc9],
      [0xc2, 0xca],
      [0xc3, 0xcb],
      [0xc4, 0xcc],
      [0xc5, 0xcd],
      [0xc7, 0xcf],
    ];
    expect([...GLO_TAG_BY_PLAIN_TAG]).toEqual(pairs);
    for (const [plain, glo] of pairs) {
      expect(gloTagFor(plain as number)).toBe(glo);
      expect(plainTagFor(glo as number)).toBe(plain);
    }
    expect(PLAIN_TAG_BY_GLO_TAG.size).toBe(7);
    // 0xC6 / 0xCE are unassigned in the xDLMS ASN.1; data-notification has no glo form.
    expect(gloTagFor(0xc6)).toBeUndefined();
    expect(plainTagFor(0xce)).toBeUndefined();
    expect(gloTagFor(0x0f)).toBeUndefined();
  });

  it('recognises ciphered APDUs by their tag', () => {
    for (const glo of PLAIN_TAG_BY_GLO_TAG.keys()) expect(isCipheredApdu(Buffer.of(glo, 0))).toBe(true);
    expect(isCipheredApdu(Buffer.of(GENERAL_GLO_CIPHERING_TAG))).toBe(true);
    for (const other of [0xc0, 0xc4, 0xce, 0x0f, 0x60, 0xdf, 0x00]) expect(isCipheredApdu(Buffer.of(other, 0))).toBe(false);
    expect(isCipheredApdu(new Uint8Array(0))).toBe(false);
  });
});

describe('Green Book vectors (suite 0)', () => {
  for (const v of GB_TABLE_40) {
    const name = `SC 0x${v.sc.toString(16)} (${v.security})`;

    it(`Table 40 glo-get-request, ${name}: encrypts to the published APDU`, () => {
      const frame = encryptApdu(GB.plaintext, {
        keys: { ek: GB.ek, ak: GB.ak },
        systemTitle: GB.systemTitle,
        invocationCounter: GB.invocationCounter,
        security: v.security,
        framing: 'glo',
      });
      expect(frame.toString('hex').toUpperCase()).toBe(v.frame);
    });

    it(`Table 40 glo-get-request, ${name}: parses and decrypts the published APDU`, () => {
      const bytes = hex(v.frame);
      expect(isCipheredApdu(bytes)).toBe(true);
      const frame = parseCipheredApdu(bytes);
      expect(frame.kind).toBe('glo');
      expect(frame.tag).toBe(0xc8);
      expect(frame.systemTitle).toBeUndefined();
      expect(frame.securityControl).toBe(v.sc);
      expect(frame.security).toEqual(parseSecurityControl(v.sc));
      expect(frame.invocationCounter).toBe(0x01234567);
      expect(frame.ciphertext.toString('hex').toUpperCase()).toBe(v.ciphertext);
      expect(frame.authTag?.toString('hex').toUpperCase()).toBe(v.tag);
      expect(decryptApdu(frame, { ek: GB.ek, ak: GB.ak }, GB.systemTitle)).toEqual(GB.plaintext);
    });
  }

  it('glo-initiate-request example: same ciphered content (SC | IC | C | T)', () => {
    const frame = encryptApdu(GB_INITIATE.plaintext, {
      keys: { ek: GB.ek, ak: GB.ak },
      systemTitle: GB.systemTitle,
      invocationCounter: GB.invocationCounter,
      security: 'authenticated-encrypted',
      framing: 'general-glo',
    });
    // DB | 08 | system title | 30 (content length 48) | content
    expect(frame.subarray(0, 11)).toEqual(Buffer.concat([Buffer.of(0xdb, 0x08), GB.systemTitle, Buffer.of(0x30)]));
    expect(frame.subarray(11)).toEqual(GB_INITIATE.content);
    expect(decryptApdu(parseCipheredApdu(frame), { ek: GB.ek, ak: GB.ak })).toEqual(GB_INITIATE.plaintext);
  });

  for (const v of GB_TABLE_43) {
    it(`Table 43 HLS-GMAC ${v.who}: authentication-only tag`, () => {
      const frame = encryptApdu(v.challenge, {
        keys: { ek: GB.ek, ak: GB.ak },
        systemTitle: v.systemTitle,
        invocationCounter: v.invocationCounter,
        security: 'authenticated',
        framing: 'general-glo',
        includeSystemTitle: false,
      });
      const parsed = parseCipheredApdu(frame);
      expect(parsed.securityControl).toBe(0x10);
      expect(parsed.ciphertext).toEqual(v.challenge);
      expect(parsed.authTag).toEqual(v.tag);
      expect(decryptApdu(parsed, { ek: GB.ek, ak: GB.ak }, v.systemTitle)).toEqual(v.challenge);
    });
  }
});

describe('general-glo-ciphering vectors', () => {
  const keys = { ek: U9N_GENERAL_GLO.key, ak: U9N_GENERAL_GLO.key };

  it('with the system title in the frame: parses, decrypts and re-encrypts to the same bytes', () => {
    const frame = parseCipheredApdu(U9N_GENERAL_GLO.frame);
    expect(frame.kind).toBe('general-glo');
    expect(frame.tag).toBe(0xdb);
    expect(frame.systemTitle).toEqual(U9N_GENERAL_GLO.systemTitle);
    expect(frame.securityControl).toBe(0x30);
    expect(frame.invocationCounter).toBe(U9N_GENERAL_GLO.invocationCounter);
    expect(frame.authTag).toHaveLength(AUTH_TAG_LENGTH);
    expect(decryptApdu(frame, keys)).toEqual(U9N_GENERAL_GLO.plaintext);
    // The frame's own system title wins over the argument.
    expect(decryptApdu(frame, keys, hex('0000000000000000'))).toEqual(U9N_GENERAL_GLO.plaintext);

    const again = encryptApdu(U9N_GENERAL_GLO.plaintext, {
      keys,
      systemTitle: U9N_GENERAL_GLO.systemTitle,
      invocationCounter: U9N_GENERAL_GLO.invocationCounter,
      security: 'authenticated-encrypted',
      framing: 'general-glo',
    });
    expect(again).toEqual(U9N_GENERAL_GLO.frame);
  });

  it('with the system title omitted: the caller supplies it', () => {
    // The same ciphered content, re-framed with a zero-length system title.
    const content = U9N_GENERAL_GLO.frame.subarray(10);
    const bytes = Buffer.concat([Buffer.of(0xdb, 0x00), content]);
    const frame = parseCipheredApdu(bytes);
    expect(frame.systemTitle).toBeUndefined();
    expect(frame.invocationCounter).toBe(U9N_GENERAL_GLO.invocationCounter);
    expect(decryptApdu(frame, keys, U9N_GENERAL_GLO.systemTitle)).toEqual(U9N_GENERAL_GLO.plaintext);
    expectDlmsError(() => decryptApdu(frame, keys), 'NO_SYSTEM_TITLE');
    expectDlmsError(() => decryptApdu(frame, keys, hex('2F19229199164104')), 'MIC_FAILURE');

    const again = encryptApdu(U9N_GENERAL_GLO.plaintext, {
      keys,
      systemTitle: U9N_GENERAL_GLO.systemTitle,
      invocationCounter: U9N_GENERAL_GLO.invocationCounter,
      security: 'authenticated-encrypted',
      framing: 'general-glo',
      includeSystemTitle: false,
    });
    expect(again).toEqual(bytes);
  });

  it('parses the published no-system-title encoding', () => {
    const frame = parseCipheredApdu(U9N_NO_TITLE_FRAME);
    expect(frame.kind).toBe('general-glo');
    expect(frame.systemTitle).toBeUndefined();
    expect(frame.securityControl).toBe(0x30);
    expect(frame.invocationCounter).toBe(2147483857);
    expect(frame.ciphertext.toString('hex').toUpperCase()).toBe('81EC9EC4BF53E9776EF0C45396');
    expect(frame.authTag?.toString('hex').toUpperCase()).toBe('9FBDFE11BE9B791AACC0FF8C');
  });
});

describe('EnergyICT (Connexo) published vectors', () => {
  for (const v of CONNEXO) {
    it(`${v.name}: encrypts to and decrypts from the published APDU`, () => {
      const keys = { ek: v.ek, ak: v.ak };
      const opts = { keys, systemTitle: v.systemTitle, invocationCounter: v.invocationCounter, security: v.security, framing: 'glo' } as const;
      expect(encryptApdu(v.plaintext, opts)).toEqual(v.frame);
      const frame = parseCipheredApdu(v.frame);
      expect(frame.invocationCounter).toBe(v.invocationCounter);
      expect(decryptApdu(frame, keys, v.systemTitle)).toEqual(v.plaintext);
    });
  }
});

// ---------------------------------------------------------------------------

const POLICIES: SecurityPolicy[] = ['authenticated-encrypted', 'authenticated', 'encrypted'];
const glotPlainTags = [...GLO_TAG_BY_PLAIN_TAG.keys()];
const key16 = fc.uint8Array({ minLength: 16, maxLength: 16 });
const title8 = fc.uint8Array({ minLength: 8, maxLength: 8 });
const counter = fc.integer({ min: 0, max: 0xffff_ffff });

const caseArb = fc
  .record({
    ek: key16,
    ak: key16,
    systemTitle: title8,
    invocationCounter: counter,
    security: fc.constantFrom(...POLICIES),
    framing: fc.constantFrom<CipheredFraming>('glo', 'general-glo'),
    includeSystemTitle: fc.boolean(),
    broadcastKey: fc.boolean(),
    firstByte: fc.integer({ min: 0, max: 255 }),
    rest: fc.uint8Array({ maxLength: 400 }),
  })
  .map((c) => {
    // glo framing needs a plain service tag first; general-glo takes anything.
    const first = c.framing === 'glo' ? (glotPlainTags[c.firstByte % glotPlainTags.length] as number) : c.firstByte;
    return { ...c, plaintext: Buffer.concat([Buffer.of(first), c.rest]) };
  });

describe('round trips (property)', () => {
  it('encrypt -> parse -> decrypt returns the APDU for every variant and framing', () => {
    fc.assert(
      fc.property(caseArb, (c) => {
        const keys = { ek: c.ek, ak: c.ak };
        const bytes = encryptApdu(c.plaintext, {
          keys,
          systemTitle: c.systemTitle,
          invocationCounter: c.invocationCounter,
          security: c.security,
          framing: c.framing,
          includeSystemTitle: c.includeSystemTitle,
          broadcastKey: c.broadcastKey,
        });
        expect(isCipheredApdu(bytes)).toBe(true);
        const frame = parseCipheredApdu(bytes);
        expect(frame.kind).toBe(c.framing);
        expect(frame.invocationCounter).toBe(c.invocationCounter);
        expect(frame.security.broadcastKey).toBe(c.broadcastKey);
        expect(frame.security.authentication).toBe(c.security !== 'encrypted');
        expect(frame.security.encryption).toBe(c.security !== 'authenticated');
        expect(frame.authTag?.length).toBe(c.security === 'encrypted' ? undefined : AUTH_TAG_LENGTH);
        expect(frame.ciphertext.length).toBe(c.plaintext.length);
        if (c.framing === 'glo') expect(frame.tag).toBe(gloTagFor(c.plaintext[0] as number));
        const withTitle = c.framing === 'general-glo' && c.includeSystemTitle;
        expect(frame.systemTitle).toEqual(withTitle ? Buffer.from(c.systemTitle) : undefined);
        expect(decryptApdu(frame, keys, c.systemTitle)).toEqual(c.plaintext);
      }),
      { numRuns: 500 },
    );
  });

  it('uses long-form lengths for large APDUs (0x81, 0x82, 0x83)', () => {
    const keys = { ek: GB.ek, ak: GB.ak };
    for (const [size, lengthByte] of [
      [120, 0x81],
      [300, 0x82],
      [70_000, 0x83],
    ] as const) {
      const plaintext = Buffer.alloc(size, 0x5a);
      plaintext[0] = 0xc4;
      const bytes = encryptApdu(plaintext, {
        keys,
        systemTitle: GB.systemTitle,
        invocationCounter: 7,
        security: 'authenticated-encrypted',
        framing: 'glo',
      });
      expect(bytes[0]).toBe(0xcc);
      expect(bytes[1]).toBe(lengthByte);
      expect(decryptApdu(parseCipheredApdu(bytes), keys, GB.systemTitle)).toEqual(plaintext);
    }
  });

  it('accepts a non-minimal length encoding (0x82 00 1E)', () => {
    const v = hex(GB_TABLE_40[0]!.frame);
    const bytes = Buffer.concat([Buffer.of(0xc8, 0x82, 0x00, 0x1e), v.subarray(2)]);
    expect(decryptApdu(parseCipheredApdu(bytes), { ek: GB.ek, ak: GB.ak }, GB.systemTitle)).toEqual(GB.plaintext);
  });

  it('accepts the invocation counter bounds 0 and 2^32-1 and refuses anything else', () => {
    const opts = { keys: { ek: GB.ek, ak: GB.ak }, systemTitle: GB.systemTitle, security: 'authenticated-encrypted', framing: 'glo' } as const;
    for (const ic of [0, 0xffff_ffff]) {
      expect(parseCipheredApdu(encryptApdu(GB.plaintext, { ...opts, invocationCounter: ic })).invocationCounter).toBe(ic);
    }
    for (const ic of [-1, 2 ** 32, 1.5, Number.NaN, Number.POSITIVE_INFINITY]) {
      expectDlmsError(() => encryptApdu(GB.plaintext, { ...opts, invocationCounter: ic }), 'BAD_VALUE');
    }
  });
});

// ---------------------------------------------------------------------------

describe('authentication failures', () => {
  const AUTHENTICATED = GB_TABLE_40.filter((v) => v.tag !== undefined);
  const keys = { ek: GB.ek, ak: GB.ak };
  const otherKey = hex('0F0E0D0C0B0A09080706050403020100');

  /** Decrypts `bytes` (or a parsed, altered frame) and expects MIC_FAILURE with a clean message. */
  function expectMicFailure(fn: () => unknown): void {
    const err = expectDlmsError(fn, 'MIC_FAILURE');
    for (const secret of [GB.ek, GB.ak, otherKey]) {
      expect(err.message.toUpperCase()).not.toContain(secret.toString('hex').toUpperCase());
    }
    expect(err.message).not.toContain('MYDUMMYGLOBALKEY');
  }

  for (const v of AUTHENTICATED) {
    describe(`SC 0x${v.sc.toString(16)}`, () => {
      const bytes = hex(v.frame);

      it('wrong AK', () => {
        expectMicFailure(() => decryptApdu(parseCipheredApdu(bytes), { ek: GB.ek, ak: otherKey }, GB.systemTitle));
      });

      it('wrong EK', () => {
        expectMicFailure(() => decryptApdu(parseCipheredApdu(bytes), { ek: otherKey, ak: GB.ak }, GB.systemTitle));
      });

      it('wrong system title', () => {
        expectMicFailure(() => decryptApdu(parseCipheredApdu(bytes), keys, hex('4D4D4D0000BC614F')));
      });

      it('wrong invocation counter (in the parsed frame and in the bytes)', () => {
        const frame = parseCipheredApdu(bytes);
        expectMicFailure(() => decryptApdu({ ...frame, invocationCounter: frame.invocationCounter + 1 }, keys, GB.systemTitle));
        const altered = Buffer.from(bytes);
        altered[6] = (altered[6] as number) ^ 0x01; // last IC byte
        expectMicFailure(() => decryptApdu(parseCipheredApdu(altered), keys, GB.systemTitle));
      });

      it('any flipped bit in the information field or the tag', () => {
        // header: tag, length, SC, IC (7 bytes); then information, then the 12-byte tag
        fc.assert(
          fc.property(fc.integer({ min: 7, max: bytes.length - 1 }), fc.integer({ min: 0, max: 7 }), (at, bit) => {
            const altered = Buffer.from(bytes);
            altered[at] = (altered[at] as number) ^ (1 << bit);
            expectMicFailure(() => decryptApdu(parseCipheredApdu(altered), keys, GB.systemTitle));
          }),
          { numRuns: 200 },
        );
      });
    });
  }

  it('flipped ciphertext bit and flipped tag bit on the general-glo vector', () => {
    const k = { ek: U9N_GENERAL_GLO.key, ak: U9N_GENERAL_GLO.key };
    const cipherBit = Buffer.from(U9N_GENERAL_GLO.frame);
    cipherBit[20] = (cipherBit[20] as number) ^ 0x80;
    expectMicFailure(() => decryptApdu(parseCipheredApdu(cipherBit), k));
    const tagBit = Buffer.from(U9N_GENERAL_GLO.frame);
    tagBit[tagBit.length - 1] = (tagBit[tagBit.length - 1] as number) ^ 0x01;
    expectMicFailure(() => decryptApdu(parseCipheredApdu(tagBit), k));
    const titleBit = Buffer.from(U9N_GENERAL_GLO.frame);
    titleBit[2] = (titleBit[2] as number) ^ 0x01;
    expectMicFailure(() => decryptApdu(parseCipheredApdu(titleBit), k));
  });

  it('a changed security control byte (0x30 -> 0x10) fails authentication', () => {
    const altered = hex(GB_TABLE_40[0]!.frame);
    altered[2] = 0x10;
    expectMicFailure(() => decryptApdu(parseCipheredApdu(altered), keys, GB.systemTitle));
  });

  it('a swapped glo tag (outside the authenticated data) is caught as BAD_TAG', () => {
    const altered = hex(GB_TABLE_40[0]!.frame);
    altered[0] = 0xc9; // glo-set-request around a get-request
    expectDlmsError(() => decryptApdu(parseCipheredApdu(altered), keys, GB.systemTitle), 'BAD_TAG');
  });

  it('encrypted-only frames cannot detect a wrong key; glo framing still catches the tag mismatch', () => {
    const frame = parseCipheredApdu(hex(GB_TABLE_40[2]!.frame));
    expectDlmsError(() => decryptApdu(frame, { ek: otherKey, ak: GB.ak }, GB.systemTitle), 'BAD_TAG');
    // AK plays no part in encryption only.
    expect(decryptApdu(frame, { ek: GB.ek, ak: new Uint8Array(0) }, GB.systemTitle)).toEqual(GB.plaintext);
  });
});

describe('argument errors', () => {
  const keys = { ek: GB.ek, ak: GB.ak };
  const frame = (): CipheredApdu => parseCipheredApdu(hex(GB_TABLE_40[0]!.frame));
  const base = { keys, systemTitle: GB.systemTitle, invocationCounter: 1, security: 'authenticated-encrypted', framing: 'glo' } as const;

  it('decrypt: key and system title lengths', () => {
    const err = expectDlmsError(() => decryptApdu(frame(), { ek: GB.ek.subarray(0, 15), ak: GB.ak }, GB.systemTitle), 'BAD_KEY');
    expect(err.message).not.toContain(GB.ek.subarray(0, 15).toString('hex'));
    expectDlmsError(() => decryptApdu(frame(), { ek: GB.ek, ak: Buffer.concat([GB.ak, Buffer.of(0)]) }, GB.systemTitle), 'BAD_KEY');
    expectDlmsError(() => decryptApdu(frame(), keys), 'NO_SYSTEM_TITLE');
    expectDlmsError(() => decryptApdu(frame(), keys, GB.systemTitle.subarray(0, 7)), 'NO_SYSTEM_TITLE');
    expectDlmsError(() => decryptApdu(frame(), keys, Buffer.concat([GB.systemTitle, Buffer.of(0)])), 'NO_SYSTEM_TITLE');
  });

  it('decrypt: an inconsistent hand-made frame', () => {
    expectDlmsError(() => decryptApdu({ ...frame(), authTag: undefined }, keys, GB.systemTitle), 'BAD_SECURITY');
    expectDlmsError(() => decryptApdu({ ...frame(), securityControl: 0x31 }, keys, GB.systemTitle), 'UNSUPPORTED');
    expectDlmsError(() => decryptApdu({ ...frame(), tag: 0xc0 }, keys, GB.systemTitle), 'BAD_TAG');
    expectDlmsError(() => decryptApdu({ ...frame(), invocationCounter: -1 }, keys, GB.systemTitle), 'BAD_VALUE');
    expectDlmsError(() => decryptApdu({ ...frame(), ciphertext: Buffer.alloc(0) }, keys, GB.systemTitle), 'BAD_LENGTH');
  });

  it('encrypt: keys, system title, plaintext and framing', () => {
    expectDlmsError(() => encryptApdu(GB.plaintext, { ...base, keys: { ek: GB.ek.subarray(1), ak: GB.ak } }), 'BAD_KEY');
    expectDlmsError(() => encryptApdu(GB.plaintext, { ...base, keys: { ek: GB.ek, ak: new Uint8Array(0) } }), 'BAD_KEY');
    // AK is not needed for encryption only.
    expect(encryptApdu(GB.plaintext, { ...base, security: 'encrypted', keys: { ek: GB.ek, ak: new Uint8Array(0) } })).toHaveLength(20);
    expectDlmsError(() => encryptApdu(GB.plaintext, { ...base, systemTitle: GB.systemTitle.subarray(1) }), 'NO_SYSTEM_TITLE');
    expectDlmsError(() => encryptApdu(new Uint8Array(0), { ...base, framing: 'general-glo' }), 'BAD_LENGTH');
    // data-notification has no glo form: general-glo only
    const notification = U9N_GENERAL_GLO.plaintext;
    expectDlmsError(() => encryptApdu(notification, base), 'BAD_TAG', 0);
    expect(parseCipheredApdu(encryptApdu(notification, { ...base, framing: 'general-glo' })).kind).toBe('general-glo');
  });
});

// ---------------------------------------------------------------------------

describe('parse errors carry offsets', () => {
  const gb30 = GB_TABLE_40[0]!.frame; // C8 1E 30 01234567 <13> <12>, 32 bytes
  const cases: ReadonlyArray<[string, string, DlmsErrorCode, number]> = [
    ['empty input', '', 'TRUNCATED', 0],
    ['a plain APDU', 'C0010000080000010000FF0200', 'BAD_TAG', 0],
    ['an unassigned glo tag (0xCE)', 'CE06200123456700', 'BAD_TAG', 0],
    ['glo tag alone', 'C8', 'TRUNCATED', 1],
    ['indefinite length', 'C880', 'BAD_LENGTH', 1],
    ['length of length 5', 'C8850000000006', 'BAD_LENGTH', 1],
    ['length bytes cut short', 'C88200', 'TRUNCATED', 3],
    ['content one byte short', gb30.slice(0, -2), 'BAD_LENGTH', 1],
    ['one trailing byte', `${gb30}00`, 'TRAILING_BYTES', 32],
    ['content shorter than SC+IC', 'C80430012345', 'BAD_LENGTH', 1],
    ['encrypted, no APDU', 'C8052001234567', 'BAD_LENGTH', 1],
    ['authenticated, room for the tag only', `C8113001234567${'00'.repeat(12)}`, 'BAD_LENGTH', 1],
    ['suite 1', 'C806310123456700', 'UNSUPPORTED', 2],
    ['compressed', 'C806B00123456700', 'UNSUPPORTED', 2],
    ['no protection', 'C806000123456700', 'BAD_SECURITY', 2],
    ['general-glo tag alone', 'DB', 'TRUNCATED', 1],
    ['system title of 7', `DB07${'00'.repeat(7)}0620012345670F`, 'BAD_LENGTH', 1],
    ['system title cut short', 'DB084D4D4D', 'BAD_LENGTH', 1],
    ['content length missing', 'DB084D4D4D0000BC614E', 'TRUNCATED', 10],
    ['content runs past the end', 'DB084D4D4D0000BC614E0620012345', 'BAD_LENGTH', 10],
    ['no title, suite 1', 'DB000621012345670F', 'UNSUPPORTED', 3],
    ['no title, trailing byte', 'DB000620012345670F00', 'TRAILING_BYTES', 9],
  ];

  for (const [name, input, code, offset] of cases) {
    it(`${name} -> ${code} at ${offset}`, () => {
      const err = expectDlmsError(() => parseCipheredApdu(hex(input)), code, offset);
      expect(err.message).toContain(`(at byte ${offset})`);
    });
  }

  it('a non-byte-array input is BAD_VALUE', () => {
    // Deliberately wrong runtime type, as a JavaScript caller could pass.
    expectDlmsError(() => parseCipheredApdu('C8' as unknown as Uint8Array), 'BAD_VALUE');
  });

  it('a minimal encrypted-only general-glo frame without a title parses', () => {
    const frame = parseCipheredApdu(hex('DB000620012345670F'));
    expect(frame).toMatchObject({ kind: 'general-glo', securityControl: 0x20, invocationCounter: 0x01234567 });
    expect(frame.ciphertext).toEqual(Buffer.of(0x0f));
    expect(frame.authTag).toBeUndefined();
  });

  it('parsed fields are copies, not views of the input', () => {
    const bytes = hex(gb30);
    const frame = parseCipheredApdu(bytes);
    bytes.fill(0);
    expect(decryptApdu(frame, { ek: GB.ek, ak: GB.ak }, GB.systemTitle)).toEqual(GB.plaintext);
  });
});

describe('fuzz', () => {
  it('20,000 mutated ciphered frames: parse + decrypt only ever throw DlmsError', () => {
    const keysFor = { gb: { ek: GB.ek, ak: GB.ak }, u9n: { ek: U9N_GENERAL_GLO.key, ak: U9N_GENERAL_GLO.key } };
    const seeds: ReadonlyArray<{ bytes: Buffer; keys: { ek: Buffer; ak: Buffer }; systemTitle: Buffer }> = [
      ...GB_TABLE_40.map((v) => ({ bytes: hex(v.frame), keys: keysFor.gb, systemTitle: GB.systemTitle })),
      { bytes: U9N_GENERAL_GLO.frame, keys: keysFor.u9n, systemTitle: U9N_GENERAL_GLO.systemTitle },
      {
        bytes: Buffer.concat([Buffer.of(0xdb, 0x00), U9N_GENERAL_GLO.frame.subarray(10)]),
        keys: keysFor.u9n,
        systemTitle: U9N_GENERAL_GLO.systemTitle,
      },
      { bytes: U9N_NO_TITLE_FRAME, keys: keysFor.gb, systemTitle: GB.systemTitle },
      ...CONNEXO.map((v) => ({ bytes: v.frame, keys: { ek: v.ek, ak: v.ak }, systemTitle: v.systemTitle })),
    ];

    const mutation = fc.oneof(
      fc.record({ op: fc.constant('set' as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
      fc.record({ op: fc.constant('flip' as const), at: fc.nat(), value: fc.integer({ min: 0, max: 7 }) }),
      fc.record({ op: fc.constant('insert' as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
      fc.record({ op: fc.constant('delete' as const), at: fc.nat(), value: fc.constant(0) }),
      fc.record({ op: fc.constant('truncate' as const), at: fc.nat(), value: fc.constant(0) }),
    );

    let parsed = 0;
    let rejected = 0;
    let decrypted = 0;
    fc.assert(
      fc.property(fc.nat({ max: seeds.length - 1 }), fc.array(mutation, { minLength: 1, maxLength: 4 }), (which, mutations) => {
        const seed = seeds[which]!;
        const bytes = [...seed.bytes];
        for (const m of mutations) {
          const at = bytes.length === 0 ? 0 : m.at % bytes.length;
          if (m.op === 'set' && bytes.length > 0) bytes[at] = m.value;
          else if (m.op === 'flip' && bytes.length > 0) bytes[at] = (bytes[at] as number) ^ (1 << m.value);
          else if (m.op === 'insert') bytes.splice(at, 0, m.value);
          else if (m.op === 'delete') bytes.splice(at, 1);
          else if (m.op === 'truncate') bytes.length = at;
        }
        const input = Uint8Array.from(bytes);
        try {
          isCipheredApdu(input);
          const frame = parseCipheredApdu(input);
          parsed++;
          decryptApdu(frame, seed.keys, seed.systemTitle);
          decrypted++;
        } catch (err) {
          rejected++;
          if (!(err instanceof DlmsError)) throw err;
          if (err.offset !== undefined) {
            expect(err.offset).toBeGreaterThanOrEqual(0);
            expect(err.offset).toBeLessThanOrEqual(input.length);
          }
        }
      }),
      { numRuns: 20_000 },
    );
    // The mutations reach both the parser's and the cipher's checks.
    expect(parsed).toBeGreaterThan(100);
    expect(rejected).toBeGreaterThan(1000);
    expect(decrypted).toBeGreaterThan(0);
  });
});

// ---------------------------------------------------------------------------

describe('RFC 3394 key wrap', () => {
  // RFC 3394 section 4.1: wrap 128 bits of key data with a 128-bit KEK.
  const kek128 = hex('000102030405060708090A0B0C0D0E0F');
  const keyData = hex('00112233445566778899AABBCCDDEEFF');
  const wrapped41 = hex('1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5');

  it('section 4.1 vector: wrap and unwrap', () => {
    expect(wrapKey(kek128, keyData)).toEqual(wrapped41);
    expect(unwrapKey(kek128, wrapped41)).toEqual(keyData);
  });

  it('sections 4.2 and 4.3: 192- and 256-bit KEKs', () => {
    // RFC 3394 4.2 (KEK 000102..17) and 4.3 (KEK 000102..1F), same key data.
    const kek192 = hex('000102030405060708090A0B0C0D0E0F1011121314151617');
    const kek256 = hex('000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F');
    expect(wrapKey(kek192, keyData)).toEqual(hex('96778B25AE6CA435F92B5B97C050AED2468AB8A17AD84E5D'));
    expect(wrapKey(kek256, keyData)).toEqual(hex('64E8C3F9CE0F5BA263E9777905818A2A93C8191E7D6E8AE7'));
  });

  it('a wrong KEK or an altered wrapped key is BAD_KEY, without key material in the message', () => {
    const wrongKek = hex('000102030405060708090A0B0C0D0E0E');
    const err = expectDlmsError(() => unwrapKey(wrongKek, wrapped41), 'BAD_KEY');
    for (const secret of [wrongKek, kek128, keyData]) expect(err.message.toUpperCase()).not.toContain(secret.toString('hex').toUpperCase());
    const altered = Buffer.from(wrapped41);
    altered[5] = (altered[5] as number) ^ 0x01;
    expectDlmsError(() => unwrapKey(kek128, altered), 'BAD_KEY');
    expectDlmsError(() => unwrapKey(kek128.subarray(1), wrapped41), 'BAD_KEY');
    expectDlmsError(() => wrapKey(kek128, keyData.subarray(1)), 'BAD_KEY');
  });

  it('wraps and unwraps any suite 0 key (property)', () => {
    fc.assert(
      fc.property(key16, key16, (kek, key) => {
        expect(unwrapKey(kek, wrapKey(kek, key))).toEqual(Buffer.from(key));
      }),
      { numRuns: 200 },
    );
  });
});
