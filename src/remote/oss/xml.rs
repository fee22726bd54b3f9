//! OSS XML bodies: the response decoders and the two request bodies we send (DeleteMultipleObjects,
//! CompleteMultipartUpload), over the element tree of [`crate::remote::xml`].
//!
//! `encoding-type=url`: when a response says `<EncodingType>url</EncodingType>`, the listed fields are
//! percent-decoded with `+` kept as `+` (OSS-PROTOCOL.md §5.0; a literal `+` is never space here).

use quick_xml::escape::escape;

use crate::checksum::parse_crc64_header;
use crate::remote::xml::shorten;
pub use crate::remote::xml::{Element, parse, parse_root};
use crate::remote::{
    CompletedPart, DeleteFailure, ListObjectsPage, ListPartsPage, ListUploadsPage, ListedObject, ListedPart,
    ListedUpload,
};
#[cfg(test)]
use crate::timefmt;

/// Percent-decode an `encoding-type=url` field; `+` stays `+`.
pub fn url_decode(s: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| format!("url-encoded field is not UTF-8 once decoded: {:?}", shorten(s)))
}

/// Decodes the fields of one response, according to its `<EncodingType>`.
struct Decoder {
    url: bool,
}

impl Decoder {
    fn of(root: &Element) -> Self {
        Decoder { url: root.text_of("EncodingType").is_some_and(|t| t.trim().eq_ignore_ascii_case("url")) }
    }

    fn field(&self, raw: &str) -> Result<String, String> {
        if self.url { url_decode(raw) } else { Ok(raw.to_string()) }
    }

    fn opt(&self, el: &Element, name: &str) -> Result<Option<String>, String> {
        el.text_of(name).filter(|t| !t.is_empty()).map(|t| self.field(t)).transpose()
    }
}

// ---------------------------------------------------------------------------------------------------------
// Error documents

/// The fields of an OSS `<Error>` document that we keep.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorDoc {
    pub code: String,
    pub message: String,
    pub request_id: Option<String>,
    pub host_id: Option<String>,
    pub ec: Option<String>,
}

/// `None` when the body is not an `<Error>` document.
pub fn parse_error(body: &[u8]) -> Option<ErrorDoc> {
    let root = parse_root(body, "Error").ok()?;
    let text = |n: &str| root.nonempty(n).map(str::to_string);
    Some(ErrorDoc {
        code: text("Code").unwrap_or_default(),
        message: text("Message").unwrap_or_default(),
        request_id: text("RequestId"),
        host_id: text("HostId"),
        ec: text("EC"),
    })
}

// ---------------------------------------------------------------------------------------------------------
// Response decoders

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
        let token = dec.opt(&root, "NextContinuationToken")?;
        // A truncated page without a token would make a caller list the first page forever.
        page.next_continuation_token =
            Some(token.ok_or("the listing is truncated but has no <NextContinuationToken>")?);
    }
    Ok(page)
}

/// `<ListPartsResult>`.
pub fn parse_list_parts(body: &[u8]) -> Result<ListPartsPage, String> {
    let root = parse_root(body, "ListPartsResult")?;
    let mut page = ListPartsPage::default();
    for p in root.children("Part") {
        let crc64 = match p.nonempty("HashCrc64ecma") {
            None => None,
            Some(t) => Some(parse_crc64_header(t).ok_or_else(|| format!("bad <HashCrc64ecma> {:?}", shorten(t)))?),
        };
        page.parts.push(ListedPart {
            part_number: p.required_number("PartNumber")?,
            etag: p.required("ETag")?.trim().to_string(),
            size: p.required_number("Size")?,
            crc64,
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
        let key = dec.opt(&root, "NextKeyMarker")?.unwrap_or_default();
        let id = root.nonempty("NextUploadIdMarker").unwrap_or("").to_string();
        if key.is_empty() && id.is_empty() {
            return Err("truncated but no <NextKeyMarker>/<NextUploadIdMarker>".into());
        }
        page.next_markers = Some((key, id));
    }
    Ok(page)
}

/// `<InitiateMultipartUploadResult>`: the upload id.
pub fn parse_initiate(body: &[u8]) -> Result<String, String> {
    let root = parse_root(body, "InitiateMultipartUploadResult")?;
    root.nonempty("UploadId").map(str::to_string).ok_or_else(|| "no <UploadId> in the answer".into())
}

/// `<CompleteMultipartUploadResult>`: the object's ETag.
pub fn parse_complete(body: &[u8]) -> Result<String, String> {
    let root = parse_root(body, "CompleteMultipartUploadResult")?;
    root.nonempty("ETag").map(str::to_string).ok_or_else(|| "no <ETag> in the answer".into())
}

/// `<CopyObjectResult>` or `<CopyPartResult>`: the new ETag.
pub fn parse_copy(body: &[u8], root_name: &str) -> Result<String, String> {
    let root = parse_root(body, root_name)?;
    root.nonempty("ETag").map(str::to_string).ok_or_else(|| "no <ETag> in the answer".into())
}

/// `<DeleteResult>`: the keys that could not be deleted. Quiet mode answers only failures, or nothing.
pub fn parse_delete_result(body: &[u8]) -> Result<Vec<DeleteFailure>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let root = parse_root(body, "DeleteResult")?;
    let dec = Decoder::of(&root);
    root.children("Error")
        .map(|e| {
            Ok(DeleteFailure {
                key: dec.field(e.required("Key")?)?,
                code: e.nonempty("Code").unwrap_or("").to_string(),
                message: e.nonempty("Message").unwrap_or("").to_string(),
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// Request bodies

const XML_DECL: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

/// `<Delete>` for DeleteMultipleObjects, `Quiet` first as go-v2 and py-oss2 write it.
pub fn delete_body(keys: &[String], quiet: bool) -> String {
    let mut s = String::with_capacity(64 + keys.iter().map(|k| k.len() + 32).sum::<usize>());
    s.push_str(XML_DECL);
    s.push_str("<Delete><Quiet>");
    s.push_str(if quiet { "true" } else { "false" });
    s.push_str("</Quiet>");
    for k in keys {
        s.push_str("<Object><Key>");
        s.push_str(&escape(k.as_str()));
        s.push_str("</Key></Object>");
    }
    s.push_str("</Delete>");
    s
}

/// `<CompleteMultipartUpload>`; ETags are passed through as the server gave them (quotes included).
pub fn complete_body(parts: &[CompletedPart]) -> String {
    let mut s = String::with_capacity(64 + parts.len() * 80);
    s.push_str(XML_DECL);
    s.push_str("<CompleteMultipartUpload>");
    for p in parts {
        s.push_str("<Part><PartNumber>");
        s.push_str(&p.part_number.to_string());
        s.push_str("</PartNumber><ETag>");
        s.push_str(&escape(p.etag.as_str()));
        s.push_str("</ETag></Part>");
    }
    s.push_str("</CompleteMultipartUpload>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shaped after the examples in the OSS API reference and OSS-PROTOCOL.md §5 / §8.

    const LIST_V2_URL: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult>
  <Name>examplebucket</Name>
  <Prefix>photos%2F2024%2F</Prefix>
  <MaxKeys>3</MaxKeys>
  <Delimiter>%2F</Delimiter>
  <IsTruncated>true</IsTruncated>
  <EncodingType>url</EncodingType>
  <KeyCount>3</KeyCount>
  <ContinuationToken>CgJiYw--</ContinuationToken>
  <NextContinuationToken>Ch%2Bd%2Fe%3D</NextContinuationToken>
  <Contents>
    <Key>photos%2F2024%2Fa%20b%2Bc.jpg</Key>
    <LastModified>2012-02-24T08:42:32.000Z</LastModified>
    <ETag>"5B3C1A2E053D763E1B002CC607C5A0FE"</ETag>
    <Type>Normal</Type>
    <Size>344606</Size>
    <StorageClass>Standard</StorageClass>
    <Owner><ID>0022012****</ID><DisplayName>user-example</DisplayName></Owner>
  </Contents>
  <CommonPrefixes><Prefix>photos%2F2024%2Fsub%2F</Prefix></CommonPrefixes>
  <Contents>
    <Key>photos/2024/%E4%B8%AD%E6%96%87+literal</Key>
    <LastModified>2012-02-24T08:43:07.000Z</LastModified>
    <ETag>"29B94424BC241D80B0AF488A4E4B86AF-2"</ETag>
    <Type>Multipart</Type>
    <Size>0</Size>
    <StorageClass>IA</StorageClass>
    <RestoreInfo>ongoing-request="false"</RestoreInfo>
  </Contents>
</ListBucketResult>"#;

    #[test]
    fn list_objects_v2_url_encoded() {
        let page = parse_list_objects(LIST_V2_URL.as_bytes()).unwrap();
        assert_eq!(page.objects.len(), 2);
        let a = &page.objects[0];
        assert_eq!(a.key, "photos/2024/a b+c.jpg");
        assert_eq!(a.size, 344_606);
        assert_eq!(a.etag, "\"5B3C1A2E053D763E1B002CC607C5A0FE\"");
        assert_eq!(a.last_modified, Some(timefmt::from_unix_secs(1_330_072_952)));
        assert_eq!(a.storage_class.as_deref(), Some("Standard"));
        // `+` stays `+` when decoding (Python unquote semantics), never a space.
        assert_eq!(page.objects[1].key, "photos/2024/中文+literal");
        assert_eq!(page.objects[1].size, 0);
        assert_eq!(page.common_prefixes, vec!["photos/2024/sub/".to_string()]);
        assert_eq!(page.next_continuation_token.as_deref(), Some("Ch+d/e="));
    }

    #[test]
    fn list_objects_without_encoding_keeps_text_verbatim() {
        let xml = r#"<ListBucketResult xmlns="http://doc.oss-cn-hangzhou.aliyuncs.com"><IsTruncated>false</IsTruncated>
            <Contents><Key> lead%20ing &amp; &lt;x&gt; &#x4E2D;</Key><Size>5</Size></Contents></ListBucketResult>"#;
        let page = parse_list_objects(xml.as_bytes()).unwrap();
        assert_eq!(page.objects[0].key, " lead%20ing & <x> 中");
        assert_eq!(page.objects[0].etag, "");
        assert_eq!(page.next_continuation_token, None);
    }

    #[test]
    fn truncated_listing_without_token_is_an_error() {
        let xml = "<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>";
        assert!(parse_list_objects(xml.as_bytes()).unwrap_err().contains("NextContinuationToken"));
    }

    #[test]
    fn list_parts() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListPartsResult>
    <Bucket>multipart_upload</Bucket>
    <Key>multipart.data</Key>
    <UploadId>0004B999EF5A239BB9138C6227D69F95</UploadId>
    <PartNumberMarker>0</PartNumberMarker>
    <NextPartNumberMarker>5</NextPartNumberMarker>
    <MaxParts>2</MaxParts>
    <IsTruncated>true</IsTruncated>
    <Part>
        <PartNumber>1</PartNumber>
        <LastModified>2012-02-23T07:01:34.000Z</LastModified>
        <ETag>"3349DC700140D7F86A0784842780****"</ETag>
        <HashCrc64ecma>11051210869376104954</HashCrc64ecma>
        <Size>6291456</Size>
    </Part>
    <Part>
        <PartNumber>5</PartNumber>
        <LastModified>2012-02-23T07:02:03.000Z</LastModified>
        <ETag>"7265F4D211B56873A381D321F586****"</ETag>
        <Size>1024</Size>
    </Part>
</ListPartsResult>"#;
        let page = parse_list_parts(xml.as_bytes()).unwrap();
        assert_eq!(page.parts.len(), 2);
        assert_eq!(page.parts[0].part_number, 1);
        assert_eq!(page.parts[0].crc64, Some(0x995D_C9BB_DF19_39FA));
        assert_eq!(page.parts[0].size, 6_291_456);
        assert_eq!(page.parts[0].etag, "\"3349DC700140D7F86A0784842780****\"");
        assert_eq!(page.parts[1].crc64, None);
        assert_eq!(page.next_part_number_marker, Some(5));

        let last = xml.replace("<IsTruncated>true", "<IsTruncated>false");
        assert_eq!(parse_list_parts(last.as_bytes()).unwrap().next_part_number_marker, None);
        let bad = xml.replace("<Size>1024</Size>", "<Size>lots</Size>");
        assert!(parse_list_parts(bad.as_bytes()).unwrap_err().contains("Size"));
    }

    #[test]
    fn list_multipart_uploads() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://doc.oss-cn-hangzhou.aliyuncs.com">
    <EncodingType>url</EncodingType>
    <Bucket>oss-example</Bucket>
    <KeyMarker></KeyMarker>
    <UploadIdMarker></UploadIdMarker>
    <NextKeyMarker>mirror%2Fb%20c</NextKeyMarker>
    <NextUploadIdMarker>0004B99B8E707874FC2D692FA5D77D3F</NextUploadIdMarker>
    <Delimiter></Delimiter>
    <Prefix>mirror%2F</Prefix>
    <MaxUploads>2</MaxUploads>
    <IsTruncated>true</IsTruncated>
    <Upload>
        <Key>mirror%2Fa.txt</Key>
        <UploadId>0004B999EF518A1FE585B0C9360DC4C8</UploadId>
        <Initiated>2012-02-23T04:18:23.000Z</Initiated>
    </Upload>
    <Upload>
        <Key>mirror%2Fb%20c</Key>
        <UploadId>0004B99B8E707874FC2D692FA5D77D3F</UploadId>
        <Initiated>2012-02-23T06:14:27.000Z</Initiated>
    </Upload>
</ListMultipartUploadsResult>"#;
        let page = parse_list_uploads(xml.as_bytes()).unwrap();
        assert_eq!(page.uploads.len(), 2);
        assert_eq!(page.uploads[0].key, "mirror/a.txt");
        assert_eq!(page.uploads[1].key, "mirror/b c");
        assert_eq!(page.uploads[1].upload_id, "0004B99B8E707874FC2D692FA5D77D3F");
        assert_eq!(page.uploads[0].initiated, timefmt::parse_xml_date("2012-02-23T04:18:23.000Z"));
        assert_eq!(page.next_markers, Some(("mirror/b c".to_string(), "0004B99B8E707874FC2D692FA5D77D3F".to_string())));
    }

    #[test]
    fn initiate_complete_copy() {
        let init = r#"<?xml version="1.0" encoding="UTF-8"?>
<InitiateMultipartUploadResult xmlns="http://doc.oss-cn-hangzhou.aliyuncs.com">
    <Bucket>oss-example</Bucket>
    <Key>multipart.data</Key>
    <UploadId>0004B9894A22E5B1888A1E29F823****</UploadId>
    <EncodingType>url</EncodingType>
</InitiateMultipartUploadResult>"#;
        assert_eq!(parse_initiate(init.as_bytes()).unwrap(), "0004B9894A22E5B1888A1E29F823****");
        assert!(
            parse_initiate(b"<InitiateMultipartUploadResult><UploadId> </UploadId></InitiateMultipartUploadResult>")
                .is_err()
        );

        let complete = r#"<?xml version="1.0" encoding="UTF-8"?>
<CompleteMultipartUploadResult xmlns="http://doc.oss-cn-hangzhou.aliyuncs.com">
  <EncodingType>url</EncodingType>
  <Location>http://oss-example.oss-cn-hangzhou.aliyuncs.com/multipart.data</Location>
  <Bucket>oss-example</Bucket>
  <Key>multipart.data</Key>
  <ETag>"B864DB6A936D376F9F8D3ED3BBE540****-3"</ETag>
</CompleteMultipartUploadResult>"#;
        assert_eq!(parse_complete(complete.as_bytes()).unwrap(), "\"B864DB6A936D376F9F8D3ED3BBE540****-3\"");

        let copy = r#"<?xml version="1.0" encoding="UTF-8"?>
<CopyObjectResult xmlns="http://doc.oss-cn-hangzhou.aliyuncs.com">
    <LastModified>Fri, 24 Feb 2012 07:18:48 GMT</LastModified>
    <ETag>"5B3C1A2E053D763E1B002CC607C5****"</ETag>
</CopyObjectResult>"#;
        assert_eq!(parse_copy(copy.as_bytes(), "CopyObjectResult").unwrap(), "\"5B3C1A2E053D763E1B002CC607C5****\"");
        assert!(parse_copy(copy.as_bytes(), "CopyPartResult").unwrap_err().contains("CopyPartResult"));
        let part = r#"<CopyPartResult><LastModified>2014-07-17T06:27:54.000Z</LastModified><ETag>&quot;5B3C1A2E053D763E1B002CC607C5****&quot;</ETag></CopyPartResult>"#;
        assert_eq!(parse_copy(part.as_bytes(), "CopyPartResult").unwrap(), "\"5B3C1A2E053D763E1B002CC607C5****\"");
    }

    #[test]
    fn delete_results() {
        assert_eq!(parse_delete_result(b"").unwrap(), vec![]);
        assert_eq!(parse_delete_result(b"  \n").unwrap(), vec![]);
        let verbose = r#"<?xml version="1.0" encoding="UTF-8"?>
<DeleteResult xmlns="http://doc.oss-cn-hangzhou.aliyuncs.com">
    <EncodingType>url</EncodingType>
    <Deleted><Key>multipart.data</Key></Deleted>
    <Deleted><Key>test%20.jpg</Key><DeleteMarker>true</DeleteMarker></Deleted>
    <Error><Key>locked%2Fa%2Bb</Key><Code>AccessDenied</Code><Message>Access denied.</Message></Error>
</DeleteResult>"#;
        let failures = parse_delete_result(verbose.as_bytes()).unwrap();
        assert_eq!(
            failures,
            vec![DeleteFailure {
                key: "locked/a+b".into(),
                code: "AccessDenied".into(),
                message: "Access denied.".into()
            }]
        );
    }

    #[test]
    fn error_with_and_without_namespace() {
        let plain = r#"<?xml version="1.0" encoding="UTF-8"?>
<Error>
  <Code>MissingArgument</Code>
  <Message>Missing Some Required Arguments.</Message>
  <RequestId>57ABD896CCB80C366955****</RequestId>
  <HostId>oss-example.oss-cn-hangzhou.aliyuncs.com</HostId>
  <EC>0016-00000502</EC>
  <RecommendDoc>https://api.aliyun.com/troubleshoot?q=0016-00000502</RecommendDoc>
</Error>"#;
        let e = parse_error(plain.as_bytes()).unwrap();
        assert_eq!(e.code, "MissingArgument");
        assert_eq!(e.message, "Missing Some Required Arguments.");
        assert_eq!(e.request_id.as_deref(), Some("57ABD896CCB80C366955****"));
        assert_eq!(e.host_id.as_deref(), Some("oss-example.oss-cn-hangzhou.aliyuncs.com"));
        assert_eq!(e.ec.as_deref(), Some("0016-00000502"));

        let namespaced = r#"<?xml version="1.0" ?>
<Error xmlns="http://doc.oss-cn-hangzhou.aliyuncs.com">
  <Code>NoSuchUpload</Code>
  <Message>The specified upload does not exist.</Message>
  <UploadId>0004B9894A22E5B1888A1E29F823****</UploadId>
  <RequestId>5C3D9175B6FC201293AD****</RequestId>
</Error>"#;
        let e = parse_error(namespaced.as_bytes()).unwrap();
        assert_eq!(e.code, "NoSuchUpload");
        assert_eq!(e.host_id, None);

        let prefixed = r#"<oss:Error xmlns:oss="urn:x"><oss:Code>AccessDenied</oss:Code><oss:Message>no</oss:Message></oss:Error>"#;
        assert_eq!(parse_error(prefixed.as_bytes()).unwrap().code, "AccessDenied");

        assert_eq!(parse_error(b"<html><body>502 Bad Gateway</body></html>"), None);
        assert_eq!(parse_error(b"not xml at all"), None);
        assert_eq!(parse_error(&[0xff, 0xfe, 0x00]), None);
    }

    #[test]
    fn garbage_never_panics() {
        let samples: &[&[u8]] = &[
            b"",
            b"<",
            b"<a>",
            b"</a>",
            b"<a></b>",
            b"<a/><b/>",
            b"text<a/>",
            b"<a>&bogus;</a>",
            b"<a>&#xFFFFFFFF;</a>",
            b"<!DOCTYPE html><html><head><title>Hi</title></head><body><p>Welcome<br></body></html>",
            b"<?xml version='1.0'?><ListBucketResult><Contents><Key>k</Key></Contents></ListBucketResult>",
        ];
        for s in samples {
            let _ = parse(s);
            assert!(parse_list_objects(s).is_err(), "{}", String::from_utf8_lossy(s));
            let _ = parse_error(s);
        }
        let deep = "<a>".repeat(100) + &"</a>".repeat(100);
        assert!(parse(deep.as_bytes()).unwrap_err().contains("deeply"));
        let html = b"<!DOCTYPE html><html><body>hi</body></html>";
        assert!(parse_list_objects(html).unwrap_err().contains("<html>"));
    }

    #[test]
    fn request_bodies_escape_and_round_trip() {
        let keys = vec!["a&b<c>.txt".to_string(), "quote\"'s".to_string()];
        let body = delete_body(&keys, true);
        assert!(body.starts_with(r#"<?xml version="1.0" encoding="UTF-8"?><Delete><Quiet>true</Quiet><Object>"#));
        let root = parse_root(body.as_bytes(), "Delete").unwrap();
        let back: Vec<&str> = root.children("Object").filter_map(|o| o.text_of("Key")).collect();
        assert_eq!(back, vec!["a&b<c>.txt", "quote\"'s"]);

        let parts = vec![
            CompletedPart { part_number: 1, etag: "\"3349DC700140D7F86A0784842780ABCD\"".into(), ..Default::default() },
            CompletedPart { part_number: 5, etag: "\"7265F4D211B56873A381D321F586ABCD\"".into(), ..Default::default() },
        ];
        let body = complete_body(&parts);
        let root = parse_root(body.as_bytes(), "CompleteMultipartUpload").unwrap();
        let back: Vec<(u32, String)> = root
            .children("Part")
            .map(|p| (p.required_number("PartNumber").unwrap(), p.text_of("ETag").unwrap().to_string()))
            .collect();
        assert_eq!(back, parts.iter().map(|p| (p.part_number, p.etag.clone())).collect::<Vec<_>>());
    }

    mod never_panics {
        use super::super::*;
        use proptest::prelude::*;

        fn all_decoders(body: &[u8]) {
            let _ = parse_list_objects(body);
            let _ = parse_list_parts(body);
            let _ = parse_list_uploads(body);
            let _ = parse_initiate(body);
            let _ = parse_complete(body);
            let _ = parse_copy(body, "CopyObjectResult");
            let _ = parse_delete_result(body);
            let _ = parse_error(body);
        }

        proptest! {
            #[test]
            fn on_arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..512)) {
                all_decoders(&body);
            }

            // Near-XML: the tags, entities and encodings the decoders look at, in any order and nesting.
            #[test]
            fn on_tag_soup(body in "(<(/)?(ListBucketResult|ListPartsResult|Error|Contents|Key|Size|Part|PartNumber|\
                IsTruncated|NextContinuationToken|NextPartNumberMarker|EncodingType|Upload|UploadId|ETag|DeleteResult)(/)?>\
                |true|url|%[0-9A-Fa-f]{0,2}|&(amp|lt|#x?[0-9a-fA-F]{0,8}|bogus);?|<!\\[CDATA\\[[a-z]*\\]\\]>|[0-9 +a-z]{0,4}){0,40}") {
                all_decoders(body.as_bytes());
            }
        }
    }
}
