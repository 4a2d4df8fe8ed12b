//! `station::nvs` against the golden images in `fixtures/nvs/`, made by Espressif's generator
//! (`fixtures/README.md` names the version and command), and optionally against the generator
//! itself, run live (`STATION_NVS_REFERENCE=1`).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use station::nvs::{self, Entry, NvsError, Value};

/// Every fixture with a golden image; all were generated for a 0x6000 partition.
const FIXTURES: [&str; 7] = [
    "dps",
    "dps_root_ca",
    "blob_multipage",
    "integers",
    "two_namespaces",
    "page_edges",
    "nearly_full",
];
const FIXTURE_SIZE: usize = 0x6000;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/nvs")
}

fn code(error: &NvsError) -> String {
    miette::Diagnostic::code(error).map_or_else(String::new, |code| code.to_string())
}

/// Reads a CSV in the generator's format (`key,type,encoding,value`; `#` comment lines) into
/// entries, the way the generator interprets it. `file` rows name a file relative to the CSV's
/// directory (the generator takes them relative to its working directory; `regenerate.sh` runs
/// it from there).
///
/// Two things the generator does with some CSVs are not what the CSV says, and `nvs::build`
/// does not imitate them, so this helper refuses such input rather than paper over it: a
/// namespace named again after another one (the generator files the rows that follow under
/// the newest namespace), and its Wi-Fi key names (it adds hidden entries for them).
fn read_csv(path: &Path) -> Vec<Entry> {
    let dir = path.parent().expect("a CSV path has a directory");
    let mut reader = csv::ReaderBuilder::new()
        .comment(Some(b'#'))
        .from_path(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let headers = reader.headers().expect("CSV header").clone();
    assert_eq!(
        headers.iter().collect::<Vec<_>>(),
        ["key", "type", "encoding", "value"],
        "{}",
        path.display()
    );
    let mut entries = Vec::new();
    let mut namespaces: Vec<String> = Vec::new();
    for (line, record) in reader.records().enumerate() {
        let record = record.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let at = || format!("{}, row {}", path.display(), line + 2);
        let (key, kind, encoding, value) = (&record[0], &record[1], &record[2], &record[3]);
        if kind == "namespace" {
            assert!(
                namespaces.last().map(String::as_str) != Some(key)
                    && !namespaces.iter().any(|known| known == key),
                "{}: namespace `{key}` named again; the generator would misfile what follows",
                at()
            );
            namespaces.push(key.to_owned());
            continue;
        }
        assert!(
            !matches!(
                key,
                "sta.ssid" | "sta.pswd" | "ap.ssid" | "ap.passwd" | "ap.authmode"
            ),
            "{}: the generator adds hidden entries for `{key}`",
            at()
        );
        let namespace = namespaces
            .last()
            .unwrap_or_else(|| panic!("{}: an entry before any namespace", at()))
            .clone();
        let raw: Vec<u8> = match kind {
            "data" => value.as_bytes().to_vec(),
            "file" => std::fs::read(dir.join(value))
                .unwrap_or_else(|e| panic!("{}: reading {value}: {e}", at())),
            other => panic!("{}: unknown type `{other}`", at()),
        };
        let text = || String::from_utf8(raw.clone()).unwrap_or_else(|e| panic!("{}: {e}", at()));
        let integer = |text: String| -> i128 {
            text.trim()
                .parse()
                .unwrap_or_else(|e| panic!("{}: `{text}`: {e}", at()))
        };
        // The generator takes integers as Python ints and refuses what does not fit the type.
        macro_rules! integer {
            ($variant:ident) => {{
                let wide = integer(text());
                Value::$variant(
                    wide.try_into().unwrap_or_else(|_| {
                        panic!("{}: {wide} is out of range for {encoding}", at())
                    }),
                )
            }};
        }
        let value = match encoding {
            "u8" => integer!(U8),
            "i8" => integer!(I8),
            "u16" => integer!(U16),
            "i16" => integer!(I16),
            "u32" => integer!(U32),
            "i32" => integer!(I32),
            "u64" => integer!(U64),
            "i64" => integer!(I64),
            "string" => Value::Str(text()),
            "binary" => Value::Blob(raw.clone()),
            "hex2bin" => {
                Value::Blob(hex::decode(text().trim()).unwrap_or_else(|e| panic!("{}: {e}", at())))
            }
            "base64" => Value::Blob(
                base64::engine::general_purpose::STANDARD
                    .decode(text().trim())
                    .unwrap_or_else(|e| panic!("{}: {e}", at())),
            ),
            other => panic!("{}: unknown encoding `{other}`", at()),
        };
        entries.push(Entry::new(namespace, key, value));
    }
    entries
}

/// Where `offset` falls in an image: page, and header, bitmap or entry.
fn describe(offset: usize) -> String {
    let page = offset / nvs::PAGE_SIZE;
    let within = offset % nvs::PAGE_SIZE;
    match within {
        0..32 => format!("page {page}, page header byte {within}"),
        32..64 => format!(
            "page {page}, state bitmap (entries {}..={})",
            (within - 32) * 4,
            (within - 32) * 4 + 3
        ),
        _ => format!(
            "page {page}, entry {}, byte {}",
            (within - 64) / 32,
            (within - 64) % 32
        ),
    }
}

/// Asserts two images are identical; otherwise says where they first differ.
fn assert_same_image(name: &str, ours: &[u8], reference: &[u8]) {
    if ours == reference {
        return;
    }
    if ours.len() != reference.len() {
        panic!(
            "{name}: our image is {} bytes, the reference {}",
            ours.len(),
            reference.len()
        );
    }
    let first = ours
        .iter()
        .zip(reference)
        .position(|(a, b)| a != b)
        .expect("images differ somewhere");
    let differing = ours.iter().zip(reference).filter(|(a, b)| a != b).count();
    let window = |image: &[u8]| hex::encode(&image[first..(first + 16).min(image.len())]);
    panic!(
        "{name}: first difference at offset {first:#x} ({}), {differing} bytes differ in all\n  ours:      {}\n  reference: {}",
        describe(first),
        window(ours),
        window(reference)
    );
}

#[test]
fn build_reproduces_every_golden_image() {
    for name in FIXTURES {
        let entries = read_csv(&fixture_dir().join(format!("{name}.csv")));
        let golden = std::fs::read(fixture_dir().join(format!("{name}.bin"))).expect("golden");
        let ours = nvs::build(&entries, FIXTURE_SIZE).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_same_image(name, &ours, &golden);
        assert!(nvs::check_fits(&entries, FIXTURE_SIZE).is_ok(), "{name}");
        assert!(
            nvs::required_size(&entries).expect("valid") <= FIXTURE_SIZE,
            "{name}"
        );
    }
}

#[test]
fn parse_reads_every_golden_image_back_to_its_csv() {
    for name in FIXTURES {
        let entries = read_csv(&fixture_dir().join(format!("{name}.csv")));
        let golden = std::fs::read(fixture_dir().join(format!("{name}.bin"))).expect("golden");
        let parsed = nvs::parse(&golden).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(parsed.len(), entries.len(), "{name}");
        for (found, expected) in parsed.iter().zip(&entries) {
            assert_eq!(found, expected, "{name}");
        }
    }
}

#[test]
fn dps_fixture_holds_the_station_namespace() {
    let entries =
        nvs::parse(&std::fs::read(fixture_dir().join("dps_root_ca.bin")).expect("golden"))
            .expect("parses");
    let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        ["id_scope", "reg_id", "device_key", "dps_host", "root_ca"]
    );
    assert!(entries.iter().all(|e| e.namespace == "dps"));
    let pem = std::fs::read_to_string(fixture_dir().join("DigiCertGlobalRootG2.pem")).expect("pem");
    assert_eq!(entries[4].value, Value::Str(pem));
}

#[test]
fn over_full_csv_is_refused_with_does_not_fit() {
    let nearly = read_csv(&fixture_dir().join("nearly_full.csv"));
    let over = read_csv(&fixture_dir().join("over_full.csv"));
    assert_eq!(over.len(), nearly.len() + 1);
    let error = nvs::build(&over, FIXTURE_SIZE).expect_err("over-full input");
    assert_eq!(code(&error), "station::nvs::does_not_fit");
    assert_eq!(
        error,
        NvsError::DoesNotFit {
            namespace: "fill".to_owned(),
            key: "one_more".to_owned(),
            size: FIXTURE_SIZE,
            required: 0x7000,
            missing: 4096,
        }
    );
    assert!(error.is_input_error());
    assert_eq!(
        station::Error::from(error.clone()).code(),
        "station::nvs::does_not_fit"
    );
    assert_eq!(nvs::check_fits(&over, FIXTURE_SIZE), Err(error));
    assert_eq!(nvs::required_size(&over).expect("valid"), 0x7000);
    assert!(nvs::build(&over, 0x7000).is_ok());
}

#[test]
fn corrupted_images_are_reported_by_the_reader() {
    let golden = std::fs::read(fixture_dir().join("dps.bin")).expect("golden");
    // Entry 3 of page 0 is reg_id's header, entry 4 its data (`sensor-240ac4123456`).
    let cases = [
        (0x40 + 4 * 32 + 5, 3, "data"),
        (0x40 + 3 * 32 + 9, 3, "header"),
    ];
    for (offset, expected_entry, expected_part) in cases {
        let mut image = golden.clone();
        image[offset] ^= 0x01;
        let error = nvs::parse(&image).expect_err("corrupt image");
        assert_eq!(code(&error), "station::nvs::bad_entry_crc", "{error}");
        assert!(!error.is_input_error());
        let NvsError::BadEntryCrc {
            page, entry, part, ..
        } = error
        else {
            panic!("unexpected {error:?}");
        };
        assert_eq!((page, entry, part), (0, expected_entry, expected_part));
    }
    // A flipped bit in the page header's sequence number.
    let mut image = golden.clone();
    image[5] ^= 0x01;
    let error = nvs::parse(&image).expect_err("corrupt header");
    assert_eq!(code(&error), "station::nvs::bad_page_crc", "{error}");
    // Something that is not NVS at all.
    let error = nvs::parse(&vec![0x5A; FIXTURE_SIZE]).expect_err("not NVS");
    assert_eq!(code(&error), "station::nvs::not_an_image", "{error}");
    // A truncated read.
    let error = nvs::parse(&golden[..0x5F00]).expect_err("truncated");
    assert_eq!(code(&error), "station::nvs::truncated");
}

/// Compares `nvs::build` with the reference generator on random entry sets. Needs
/// `esp-idf-nvs-partition-gen` installed; runs only with `STATION_NVS_REFERENCE=1`
/// (`fixtures/README.md`).
#[test]
fn reference_generator_agrees_on_random_entry_sets() {
    if std::env::var("STATION_NVS_REFERENCE").as_deref() != Ok("1") {
        eprintln!("skipped: set STATION_NVS_REFERENCE=1 to compare with the reference generator");
        return;
    }
    let python = std::env::var("STATION_NVS_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let cases: usize = std::env::var("STATION_NVS_CASES")
        .ok()
        .map(|n| n.parse().expect("STATION_NVS_CASES is a number"))
        .unwrap_or(200);
    let seed: u64 = std::env::var("STATION_NVS_SEED")
        .ok()
        .map(|n| n.parse().expect("STATION_NVS_SEED is a number"))
        .unwrap_or(0x5EED_0F57_A711_0011);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut random = Random(seed);
    let (mut built, mut refused) = (0, 0);
    for case in 0..cases {
        let entries = random_entries(&mut random);
        // A third of the cases at a random size, a third at exactly the size `required_size`
        // names (the generator must accept it), a third one page smaller (it must refuse).
        let required = nvs::required_size(&entries).expect("valid entries");
        let size = match random.below(3) {
            0 => [0x3000, 0x4000, 0x5000, 0x6000, 0x8000, 0x10000][random.below(6)],
            1 => required,
            _ => (required - nvs::PAGE_SIZE).max(nvs::MIN_PARTITION_SIZE),
        };
        let csv = write_case_csv(dir.path(), case, &entries);
        let output = std::process::Command::new(&python)
            .args(["-m", "esp_idf_nvs_partition_gen", "generate"])
            .arg(&csv)
            .arg(format!("case{case}.bin"))
            .arg(format!("{size:#x}"))
            .arg("--outdir")
            .arg(dir.path())
            .current_dir(dir.path())
            .output()
            .expect("runs the reference generator");
        let ours = nvs::build(&entries, size);
        let context = format!("case {case} (seed {seed}, {size:#x}, {})", csv.display());
        if output.status.success() {
            let reference =
                std::fs::read(dir.path().join(format!("case{case}.bin"))).expect("reference image");
            let ours = ours.unwrap_or_else(|e| panic!("{context}: generator built it, we: {e}"));
            assert_same_image(&context, &ours, &reference);
            assert_eq!(nvs::parse(&ours).expect("parses"), entries, "{context}");
            built += 1;
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let error = ours.expect_err(&format!("{context}: generator refused it: {stderr}"));
            assert_eq!(code(&error), "station::nvs::does_not_fit", "{context}");
            assert!(
                stderr.contains("InsufficientSizeError"),
                "{context}: {stderr}"
            );
            refused += 1;
        }
    }
    eprintln!("{built} images identical, {refused} refused by both, out of {cases}");
}

/// A small deterministic generator (xorshift64*), so that a failing case can be replayed with
/// its seed.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn name(&mut self, taken: &[String]) -> String {
        const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789_";
        loop {
            let len = 1 + self.below(15);
            let name: String = (0..len)
                .map(|_| CHARS[self.below(CHARS.len())] as char)
                .collect();
            if !taken.contains(&name) {
                return name;
            }
        }
    }

    fn text(&mut self, len: usize) -> String {
        // Some multi-byte characters, so lengths are counted in bytes.
        const PIECES: [&str; 6] = ["a", "Z", "7", " ", "-", "é"];
        let mut text = String::new();
        while text.len() < len {
            let piece = PIECES[self.below(PIECES.len())];
            if text.len() + piece.len() > len {
                text.push('x');
            } else {
                text.push_str(piece);
            }
        }
        text
    }
}

fn random_entries(random: &mut Random) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut namespaces = Vec::new();
    for _ in 0..1 + random.below(3) {
        let namespace = random.name(&namespaces);
        namespaces.push(namespace.clone());
        let mut keys = Vec::new();
        for _ in 0..random.below(25) {
            let key = random.name(&keys);
            keys.push(key.clone());
            let bits = random.next();
            let value = match random.below(12) {
                0 => Value::U8(bits as u8),
                1 => Value::I8(bits as i8),
                2 => Value::U16(bits as u16),
                3 => Value::I16(bits as i16),
                4 => Value::U32(bits as u32),
                5 => Value::I32(bits as i32),
                6 => Value::U64(bits),
                7 => Value::I64(bits as i64),
                8 | 9 => {
                    let len = match random.below(4) {
                        0 => random.below(40),
                        1 => random.below(400),
                        2 => random.below(2000),
                        _ => nvs::MAX_STRING_LEN - random.below(200),
                    };
                    Value::Str(random.text(len))
                }
                _ => {
                    let len = match random.below(3) {
                        0 => random.below(40),
                        1 => random.below(4100),
                        _ => random.below(20_000),
                    };
                    Value::Blob((0..len).map(|_| random.next() as u8).collect())
                }
            };
            entries.push(Entry::new(namespace.clone(), key, value));
        }
    }
    entries
}

/// Writes the case as a generator CSV: integers inline, strings and blobs through files so
/// that no value needs CSV quoting.
fn write_case_csv(dir: &Path, case: usize, entries: &[Entry]) -> PathBuf {
    let mut csv = String::from("key,type,encoding,value\n");
    let mut namespace = None;
    for (n, entry) in entries.iter().enumerate() {
        if namespace != Some(&entry.namespace) {
            csv.push_str(&format!("{},namespace,,\n", entry.namespace));
            namespace = Some(&entry.namespace);
        }
        let file = |bytes: &[u8]| {
            let name = format!("case{case}_{n}.dat");
            std::fs::write(dir.join(&name), bytes).expect("writes value file");
            name
        };
        let row = match &entry.value {
            Value::U8(v) => format!("data,u8,{v}"),
            Value::I8(v) => format!("data,i8,{v}"),
            Value::U16(v) => format!("data,u16,{v}"),
            Value::I16(v) => format!("data,i16,{v}"),
            Value::U32(v) => format!("data,u32,{v}"),
            Value::I32(v) => format!("data,i32,{v}"),
            Value::U64(v) => format!("data,u64,{v}"),
            Value::I64(v) => format!("data,i64,{v}"),
            Value::Str(text) => format!("file,string,{}", file(text.as_bytes())),
            Value::Blob(data) => format!("file,binary,{}", file(data)),
        };
        csv.push_str(&format!("{},{row}\n", entry.key));
    }
    let path = dir.join(format!("case{case}.csv"));
    std::fs::write(&path, csv).expect("writes CSV");
    path
}
