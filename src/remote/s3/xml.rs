//! S3 XML bodies: the decoders that differ from OSS, and the request bodies we send.
//!
//! Documents shaped like OSS's (`<Error>`, `<InitiateMultipartUploadResult>`, `<CopyObjectResult>`,
//! `<DeleteResult>`, `<Delete>`) use the OSS functions; this module covers what S3 does differently:
//!
//! - `encoding-type=url` is *form* encoding in S3 (a space comes back as `+`, a literal `+` as `%2B`; AWS
//!   and SeaweedFS both do this and botocore decodes with `unquote_plus`), where OSS keeps `+` literal.
//!   Only `Key`, `Prefix`, `Delimiter` and `StartAfter` are encoded; a continuation token is opaque and
//!   passed back untouched.
//! - `<CompleteMultipartUploadResult>` carries the whole object's checksum (`ChecksumCRC64NVME`).
//! - `<CompleteMultipartUpload>` carries each part's checksum.
//! - CRC-64/NVME values travel as Base64 of the big-endian 8 bytes.

use base64::Engine as _;
use quick_xml::escape::escape;

use crate::remote::xml::{Element, parse_root, shorten};
use crate::remote::{
    CompletedPart, ListObjectsPage, ListPartsPage, ListUploadsPage, ListedObject, ListedPart, ListedUpload,
};

pub use crate::remote::oss::xml::{delete_body, parse_copy, parse_delete_result, parse_error, parse_initiate};

const XML_DECL: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;
const S3_NS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

/// Base64 of a CRC-64 as S3 sends it (big-endian bytes).
pub fn crc64_to_base64(crc: u64) -> String {
    base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes())
}

/// A Base64 CRC-64 as S3 sends it; `None` unless it is exactly 8 bytes (a composite `…-N` value is not).
pub fn crc64_from_base64(text: &str) -> Option<u64> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(text.trim()).ok()?;
    let arr: [u8; 8] = bytes.try_into().ok()?;
    Some(u64::from_be_bytes(arr))
}

/// Form-decode an `encoding-type=url` field: `+` is a space, `%XX` a byte.
pub fn form_decode(s: &str) -> Result<String, String> {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| format!("url-encoded field is not UTF-8 once decoded: {:?}", shorten(s)))
}

struct Decoder {
    url: bool,
}

impl Decoder {
    fn of(root: &Element) -> Self {
        Decoder { url: root.text_of("EncodingType").is_some_and(|t| t.trim().eq_ignore_ascii_case("url")) }
    }

    fn field(&self, raw: &str) -> Result<String, String> {
        if self.url { form_decode(raw) } else { Ok(raw.to_string()) }
    }
}

/// `<ListBucketResult>` of ListObjectsV2.
pub fn parse_list_objects(body: &[u8]) -> Result<ListObjectsPage, String> {
    let root = parse_root(body, "ListBucketResult")?;
    let dec = Decoder::of(&root);
    let mut page = ListObjectsPage::default();
    for c in root.children("Contents") {
        page.objects.push(ListedObject {
            key: dec.field(c.required("Key")?)?,
            size: c.required_number("Size")?,
            etag: c.text_of("ETag").unwrap_or("").trim().to_string(),
            last_modified: c.date("LastModified"),
            storage_class: c.nonempty("StorageClass").map(str::to_string),
        });
    }
    for p in root.children("CommonPrefixes") {
        page.common_prefixes.push(dec.field(p.required("Prefix")?)?);
    }
    if root.flag("IsTruncated") {
        // Opaque: never decoded, sent back as it came.
        let token = root.text_of("NextContinuationToken").filter(|t| !t.is_empty());
        page.next_continuation_token =
            Some(token.ok_or("the listing is truncated but has no <NextContinuationToken>")?.to_string());
    }
    Ok(page)
}

/// `<ListPartsResult>`. S3 lists no CRC-64/XZ; a part's checksum is not needed on resume (the engine
/// re-hashes kept parts).
pub fn parse_list_parts(body: &[u8]) -> Result<ListPartsPage, String> {
    let root = parse_root(body, "ListPartsResult")?;
    let mut page = ListPartsPage::default();
    for p in root.children("Part") {
        page.parts.push(ListedPart {
            part_number: p.required_number("PartNumber")?,
            etag: p.required("ETag")?.trim().to_string(),
            size: p.required_number("Size")?,
            crc64: None,
            last_modified: p.date("LastModified"),
        });
    }
    if root.flag("IsTruncated") {
        page.next_part_number_marker =
            Some(root.number("NextPartNumberMarker")?.ok_or("truncated but no <NextPartNumberMarker>")?);
    }
    Ok(page)
}

/// `<ListMultipartUploadsResult>`.
pub fn parse_list_uploads(body: &[u8]) -> Result<ListUploadsPage, String> {
    let root = parse_root(body, "ListMultipartUploadsResult")?;
    let dec = Decoder::of(&root);
    let mut page = ListUploadsPage::default();
    for u in root.children("Upload") {
        page.uploads.push(ListedUpload {
            key: dec.field(u.required("Key")?)?,
            upload_id: u.required("UploadId")?.trim().to_string(),
            initiated: u.date("Initiated"),
        });
    }
    if root.flag("IsTruncated") {
        let key = match root.text_of("NextKeyMarker").filter(|t| !t.is_empty()) {
            Some(k) => dec.field(k)?,
            None => String::new(),
        };
        let id = root.nonempty("NextUploadIdMarker").unwrap_or("").to_string();
        if key.is_empty() && id.is_empty() {
            return Err("truncated but no <NextKeyMarker>/<NextUploadIdMarker>".into());
        }
        page.next_markers = Some((key, id));
    }
    Ok(page)
}

/// What `<CompleteMultipartUploadResult>` says: the ETag and, for a checksummed upload, the whole
/// object's CRC-64/NVME and the checksum type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompleteAnswer {
    pub etag: String,
    pub crc64nvme: Option<u64>,
    pub checksum_type: Option<String>,
}

pub fn parse_complete(body: &[u8]) -> Result<CompleteAnswer, String> {
    let root = parse_root(body, "CompleteMultipartUploadResult")?;
    let etag = root.nonempty("ETag").map(str::to_string).ok_or("no <ETag> in the answer")?;
    let crc64nvme = match root.nonempty("ChecksumCRC64NVME") {
        None => None,
        Some(t) => Some(crc64_from_base64(t).ok_or_else(|| format!("bad <ChecksumCRC64NVME> {:?}", shorten(t)))?),
    };
    Ok(CompleteAnswer { etag, crc64nvme, checksum_type: root.nonempty("ChecksumType").map(str::to_string) })
}

/// `<CompleteMultipartUpload>`; with `checksums`, each part carries its `ChecksumCRC64NVME`.
pub fn complete_body(parts: &[CompletedPart], checksums: bool) -> String {
    let mut s = String::with_capacity(96 + parts.len() * 120);
    s.push_str(XML_DECL);
    s.push_str(&format!("<CompleteMultipartUpload xmlns=\"{S3_NS}\">"));
    for p in parts {
        s.push_str("<Part><PartNumber>");
        s.push_str(&p.part_number.to_string());
        s.push_str("</PartNumber><ETag>");
        s.push_str(&escape(p.etag.as_str()));
        s.push_str("</ETag>");
        if checksums {
            s.push_str("<ChecksumCRC64NVME>");
            s.push_str(&crc64_to_base64(p.crc64nvme));
            s.push_str("</ChecksumCRC64NVME>");
        }
        s.push_str("</Part>");
    }
    s.push_str("</CompleteMultipartUpload>");
    s
}

/// `<CreateBucketConfiguration>` naming the region (S3 wants it for every region but us-east-1).
pub fn create_bucket_body(region: &str) -> String {
    format!(
        "{XML_DECL}<CreateBucketConfiguration xmlns=\"{S3_NS}\"><LocationConstraint>{}</LocationConstraint>\
         </CreateBucketConfiguration>",
        escape(region)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_base64_round_trips() {
        // SeaweedFS's answer for an empty body, and the check value of "123456789".
        assert_eq!(crc64_from_base64("AAAAAAAAAAA="), Some(0));
        let check = crate::checksum::crc64nvme(b"123456789");
        assert_eq!(crc64_from_base64(&crc64_to_base64(check)), Some(check));
        assert_eq!(crc64_to_base64(0xAE8B_1486_0A79_9888), "rosUhgp5mIg=");
        assert_eq!(crc64_from_base64("AAAA"), None);
        assert_eq!(crc64_from_base64("not base64!"), None);
        assert_eq!(crc64_from_base64("rosUhgp5mIg=-3"), None);
    }

    // Shaped after what SeaweedFS 4.48 answered (a space listed as `+`, `+` as `%2B`, the token raw).
    #[test]
    fn list_objects_form_decoded() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>probe</Name><Prefix>dir/</Prefix>
<MaxKeys>2</MaxKeys><IsTruncated>true</IsTruncated><Contents><Key>dir/a+b%2Bc.txt</Key>
<ETag>&#34;c4ca4238a0b923820dcc509a6f75849b&#34;</ETag><Size>1</Size><StorageClass>STANDARD</StorageClass>
<LastModified>2026-11-22T04:27:41Z</LastModified></Contents><Contents><Key>dir/x%26y%3Cz%3E</Key>
<ETag>&#34;c4ca&#34;</ETag><Size>1</Size></Contents><CommonPrefixes><Prefix>dir/sub+dir/</Prefix></CommonPrefixes>
<NextContinuationToken>dir/x&amp;y+z%41</NextContinuationToken><EncodingType>url</EncodingType><KeyCount>2</KeyCount>
</ListBucketResult>"#;
        let page = parse_list_objects(xml.as_bytes()).unwrap();
        assert_eq!(page.objects[0].key, "dir/a b+c.txt");
        assert_eq!(page.objects[0].etag, "\"c4ca4238a0b923820dcc509a6f75849b\"");
        assert_eq!(page.objects[0].storage_class.as_deref(), Some("STANDARD"));
        assert!(page.objects[0].last_modified.is_some());
        assert_eq!(page.objects[1].key, "dir/x&y<z>");
        assert_eq!(page.common_prefixes, vec!["dir/sub dir/".to_string()]);
        assert_eq!(page.next_continuation_token.as_deref(), Some("dir/x&y+z%41"), "the token is opaque");
        // Without EncodingType, text is taken verbatim.
        let plain = xml.replace("<EncodingType>url</EncodingType>", "");
        assert_eq!(parse_list_objects(plain.as_bytes()).unwrap().objects[0].key, "dir/a+b%2Bc.txt");
    }

    #[test]
    fn list_parts_and_uploads() {
        let parts = r#"<ListPartsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Bucket>probe</Bucket>
<IsTruncated>true</IsTruncated><Key>full</Key><MaxParts>1</MaxParts><PartNumberMarker>0</PartNumberMarker>
<NextPartNumberMarker>1</NextPartNumberMarker><Part><ETag>&#34;45cb9af3e87a27e7316523a087caf52c&#34;</ETag>
<LastModified>2026-11-22T04:26:50Z</LastModified><PartNumber>1</PartNumber><Size>5242880</Size>
<ChecksumCRC64NVME>O7BjX+lBg3I=</ChecksumCRC64NVME></Part></ListPartsResult>"#;
        let page = parse_list_parts(parts.as_bytes()).unwrap();
        assert_eq!(page.parts.len(), 1);
        assert_eq!((page.parts[0].part_number, page.parts[0].size), (1, 5_242_880));
        assert_eq!(page.parts[0].etag, "\"45cb9af3e87a27e7316523a087caf52c\"");
        assert_eq!(page.next_part_number_marker, Some(1));

        let uploads = r#"<ListMultipartUploadsResult><Bucket>probe</Bucket><IsTruncated>true</IsTruncated>
<NextKeyMarker>dir/up load+1</NextKeyMarker><NextUploadIdMarker>abc_1</NextUploadIdMarker>
<Upload><Initiated>2026-11-22T04:27:41Z</Initiated><Key>dir/up load+1</Key><UploadId>abc_1</UploadId></Upload>
</ListMultipartUploadsResult>"#;
        let page = parse_list_uploads(uploads.as_bytes()).unwrap();
        assert_eq!(page.uploads[0].key, "dir/up load+1");
        assert_eq!(page.next_markers, Some(("dir/up load+1".into(), "abc_1".into())));
    }

    #[test]
    fn complete_answer_and_body() {
        let answer = r#"<?xml version="1.0" encoding="UTF-8"?>
<CompleteMultipartUploadResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Location>http://x/probe/full</Location>
<Bucket>probe</Bucket><Key>full</Key><ETag>&#34;a59b75712711836fd1c3c03a4b1efdc5-2&#34;</ETag>
<ChecksumCRC64NVME>jr85kxBLN/M=</ChecksumCRC64NVME><ChecksumType>FULL_OBJECT</ChecksumType></CompleteMultipartUploadResult>"#;
        let a = parse_complete(answer.as_bytes()).unwrap();
        assert_eq!(a.etag, "\"a59b75712711836fd1c3c03a4b1efdc5-2\"");
        assert_eq!(a.crc64nvme, crc64_from_base64("jr85kxBLN/M="));
        assert_eq!(a.checksum_type.as_deref(), Some("FULL_OBJECT"));
        let bad = answer.replace("jr85kxBLN/M=", "jr85-2");
        assert!(parse_complete(bad.as_bytes()).unwrap_err().contains("ChecksumCRC64NVME"));
        assert!(parse_complete(b"<Error><Code>InternalError</Code></Error>").is_err());

        let parts = vec![
            CompletedPart { part_number: 1, etag: "\"e1\"".into(), crc64nvme: 1, ..Default::default() },
            CompletedPart { part_number: 2, etag: "\"e2\"".into(), crc64nvme: 2, ..Default::default() },
        ];
        let body = complete_body(&parts, true);
        let root = parse_root(body.as_bytes(), "CompleteMultipartUpload").unwrap();
        let back: Vec<(String, Option<u64>)> = root
            .children("Part")
            .map(|p| {
                (p.text_of("ETag").unwrap().to_string(), p.text_of("ChecksumCRC64NVME").and_then(crc64_from_base64))
            })
            .collect();
        assert_eq!(back, vec![("\"e1\"".to_string(), Some(1)), ("\"e2\"".to_string(), Some(2))]);
        assert!(!complete_body(&parts, false).contains("Checksum"));
        assert!(create_bucket_body("eu-west-1").contains("<LocationConstraint>eu-west-1</LocationConstraint>"));
    }

    #[test]
    fn form_decoding() {
        assert_eq!(form_decode("a+b%2Bc%20d").unwrap(), "a b+c d");
        assert!(form_decode("%FF").is_err());
    }

    proptest::proptest! {
        #[test]
        fn decoders_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = parse_list_objects(&body);
            let _ = parse_list_parts(&body);
            let _ = parse_list_uploads(&body);
            let _ = parse_complete(&body);
        }
    }
}
