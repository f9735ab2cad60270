import Foundation
import Testing

@testable import S3

/// A request of AWS's published SigV4 test suite (aws-sig-v4-test-suite, as the AWS SDKs and
/// aws-c-auth carry it) or of the S3 documentation's worked examples, with the signature AWS states.
struct SignatureVector: Sendable, CustomTestStringConvertible {
    var name: String
    var method: String
    var path: String
    var query: [(name: String, value: String)] = []
    /// Besides `Host`; `X-Amz-Date` is left for the signer to add.
    var headers: [(name: String, value: String)] = []
    var body = ""
    var sessionToken: String?
    var signedHeaders: String
    var signature: String
    /// The canonical request AWS states, where it states one.
    var canonicalRequest: String?
    var testDescription: String { name }
}

/// The suite's credentials and time: AKIDEXAMPLE, 2015-08-30T12:36:00Z, us-east-1, service `service`.
private let suiteSigner = SigV4Signer(
    credentials: S3Credentials(
        accessKeyID: "AKIDEXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
    region: "us-east-1", service: "service")
private let suiteDate = Date(timeIntervalSince1970: 1_440_938_160)

/// The S3 documentation's: AKIAIOSFODNN7EXAMPLE, 2013-05-24T00:00:00Z, us-east-1, `s3`, examplebucket.
private let s3DocSigner = SigV4Signer(
    credentials: S3Credentials(
        accessKeyID: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    region: "us-east-1", service: "s3")
private let s3DocDate = Date(timeIntervalSince1970: 1_369_353_600)

private let empty = SigV4Signer.emptyPayloadHash

private let suiteVectors: [SignatureVector] = [
    SignatureVector(
        name: "get-vanilla", method: "GET", path: "/", signedHeaders: "host;x-amz-date",
        signature: "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        canonicalRequest:
            "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n\(empty)"),
    SignatureVector(
        name: "get-vanilla-query-order-key-case", method: "GET", path: "/",
        query: [("Param2", "value2"), ("Param1", "value1")], signedHeaders: "host;x-amz-date",
        signature: "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
        canonicalRequest:
            "GET\n/\nParam1=value1&Param2=value2\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n\(empty)"
    ),
    SignatureVector(
        name: "get-vanilla-query-unreserved", method: "GET", path: "/",
        query: [
            (
                "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
                "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
            )
        ], signedHeaders: "host;x-amz-date",
        signature: "9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197"),
    SignatureVector(
        name: "get-vanilla-utf8-query", method: "GET", path: "/", query: [("ሴ", "bar")],
        signedHeaders: "host;x-amz-date",
        signature: "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04"),
    SignatureVector(
        name: "get-unreserved", method: "GET",
        path: "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", signedHeaders: "host;x-amz-date",
        signature: "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f"),
    SignatureVector(
        name: "get-utf8", method: "GET", path: "/ሴ", signedHeaders: "host;x-amz-date",
        signature: "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85",
        canonicalRequest:
            "GET\n/%E1%88%B4\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n\(empty)"),
    SignatureVector(
        name: "get-header-value-trim", method: "GET", path: "/",
        headers: [("My-Header1", " value1"), ("My-Header2", " \"a   b   c\"")],
        signedHeaders: "host;my-header1;my-header2;x-amz-date",
        signature: "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
        canonicalRequest:
            "GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value1\nmy-header2:\"a b c\"\nx-amz-date:20150830T123600Z\n\nhost;my-header1;my-header2;x-amz-date\n\(empty)"
    ),
    SignatureVector(
        name: "get-header-key-duplicate", method: "GET", path: "/",
        headers: [("My-Header1", "value2"), ("My-Header1", "value2"), ("My-Header1", "value1")],
        signedHeaders: "host;my-header1;x-amz-date",
        signature: "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea",
        canonicalRequest:
            "GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value2,value2,value1\nx-amz-date:20150830T123600Z\n\nhost;my-header1;x-amz-date\n\(empty)"
    ),
    SignatureVector(
        name: "get-header-value-order", method: "GET", path: "/",
        headers: [
            ("My-Header1", "value4"), ("My-Header1", "value1"), ("My-Header1", "value3"), ("My-Header1", "value2"),
        ],
        signedHeaders: "host;my-header1;x-amz-date",
        signature: "08c7e5a9acfcfeb3ab6b2185e75ce8b1deb5e634ec47601a50643f830c755c01"),
    SignatureVector(
        name: "post-vanilla", method: "POST", path: "/", signedHeaders: "host;x-amz-date",
        signature: "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
    SignatureVector(
        name: "post-vanilla-query", method: "POST", path: "/", query: [("Param1", "value1")],
        signedHeaders: "host;x-amz-date",
        signature: "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11"),
    SignatureVector(
        name: "post-vanilla-query-nonunreserved", method: "POST", path: "/",
        query: [("@#$%^", ""), ("+", "/,?><`\";:\\|][{}")], signedHeaders: "host;x-amz-date",
        signature: "66c82657c86e26fb25238d0e69f011edc4c6df5ae71119d7cb98ed9b87393c1e"),
    SignatureVector(
        name: "post-header-value-case", method: "POST", path: "/", headers: [("My-Header1", "VALUE1")],
        signedHeaders: "host;my-header1;x-amz-date",
        signature: "cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d"),
    SignatureVector(
        name: "post-x-www-form-urlencoded", method: "POST", path: "/",
        headers: [("Content-Type", "application/x-www-form-urlencoded")], body: "Param1=value1",
        signedHeaders: "content-type;host;x-amz-date",
        signature: "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"),
    SignatureVector(
        name: "post-sts-header-before", method: "POST", path: "/",
        sessionToken:
            "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==",
        signedHeaders: "host;x-amz-date;x-amz-security-token",
        signature: "85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead"),
]

/// The worked examples of "Signature Calculations for the Authorization Header: Transferring
/// Payload in a Single Chunk" (S3 API reference).
private let s3DocumentVectors: [SignatureVector] = [
    SignatureVector(
        name: "GET Object (range)", method: "GET", path: "/test.txt",
        headers: [("Range", "bytes=0-9"), ("x-amz-content-sha256", empty)],
        signedHeaders: "host;range;x-amz-content-sha256;x-amz-date",
        signature: "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
        canonicalRequest:
            "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\nx-amz-content-sha256:\(empty)\nx-amz-date:20130524T000000Z\n\nhost;range;x-amz-content-sha256;x-amz-date\n\(empty)"
    ),
    SignatureVector(
        name: "PUT Object ($ in the key, storage class)", method: "PUT", path: "/test$file.text",
        headers: [
            ("Date", "Fri, 24 May 2013 00:00:00 GMT"), ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ("x-amz-content-sha256", "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"),
        ], body: "Welcome to Amazon S3.",
        signedHeaders: "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
        signature: "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"),
    SignatureVector(
        name: "GET Bucket Lifecycle (a parameter without value)", method: "GET", path: "/",
        query: [("lifecycle", "")], headers: [("x-amz-content-sha256", empty)],
        signedHeaders: "host;x-amz-content-sha256;x-amz-date",
        signature: "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"),
    SignatureVector(
        name: "GET Bucket (List Objects)", method: "GET", path: "/", query: [("prefix", "J"), ("max-keys", "2")],
        headers: [("x-amz-content-sha256", empty)], signedHeaders: "host;x-amz-content-sha256;x-amz-date",
        signature: "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"),
]

private func sign(_ v: SignatureVector, _ signer: SigV4Signer, host: String, at date: Date) -> SigV4Signature {
    var signer = signer
    signer.credentials.sessionToken = v.sessionToken
    return signer.sign(
        SigV4Request(
            method: v.method, path: v.path, query: v.query, headers: [("Host", host)] + v.headers,
            payloadHash: SigV4Signer.payloadHash(Array(v.body.utf8))),
        at: date)
}

private func check(_ v: SignatureVector, _ s: SigV4Signature, key: String, scope: String) {
    #expect(s.signature == v.signature)
    #expect(
        s.authorization
            == "AWS4-HMAC-SHA256 Credential=\(key)/\(scope), SignedHeaders=\(v.signedHeaders), Signature=\(v.signature)"
    )
    if let canonical = v.canonicalRequest { #expect(s.canonicalRequest == canonical) }
}

@Test("SigV4 matches AWS's test suite", arguments: suiteVectors)
func suiteVector(_ v: SignatureVector) {
    let s = sign(v, suiteSigner, host: "example.amazonaws.com", at: suiteDate)
    check(v, s, key: "AKIDEXAMPLE", scope: "20150830/us-east-1/service/aws4_request")
    #expect(s.addedHeaders.first { $0.name == "x-amz-date" }?.value == "20150830T123600Z")
    #expect(s.addedHeaders.first { $0.name == "x-amz-security-token" }?.value == v.sessionToken)
}

@Test("SigV4 matches the S3 documentation's worked examples", arguments: s3DocumentVectors)
func s3DocumentVector(_ v: SignatureVector) {
    let s = sign(v, s3DocSigner, host: "examplebucket.s3.amazonaws.com", at: s3DocDate)
    check(v, s, key: "AKIAIOSFODNN7EXAMPLE", scope: "20130524/us-east-1/s3/aws4_request")
}

@Test func theDocumentedGetObjectStringToSign() {
    let s = sign(s3DocumentVectors[0], s3DocSigner, host: "examplebucket.s3.amazonaws.com", at: s3DocDate)
    #expect(
        s.stringToSign
            == "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
    )
}

@Test func theDocumentedPutPayloadHash() {
    #expect(
        SigV4Signer.payloadHash(Array("Welcome to Amazon S3.".utf8))
            == "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072")
}

@Test(
    "Keys are encoded per path segment, '/' kept, every byte but the unreserved ones escaped",
    arguments: [
        ("/bucket/shards/15/428/3015.g7.tif", "/bucket/shards/15/428/3015.g7.tif"),
        ("/bucket/a b/c+d", "/bucket/a%20b/c%2Bd"),
        ("/bucket/dalles/0704_6618 (2).tif", "/bucket/dalles/0704_6618%20%282%29.tif"),
        ("/bucket/été/ሴ", "/bucket/%C3%A9t%C3%A9/%E1%88%B4"),
        ("/bucket/a%2Fb", "/bucket/a%252Fb"),
        ("/bucket/x=1&y?#", "/bucket/x%3D1%26y%3F%23"),
        ("/bucket//double", "/bucket//double"),
    ])
func keyEncoding(_ path: String, _ encoded: String) {
    #expect(SigV4Signer.canonicalPath(path) == encoded)
}

@Test func theSecretIsNeverPrinted() {
    let credentials = S3Credentials(accessKeyID: "AKID", secretAccessKey: "s3cr3t-value", sessionToken: "t0ken-value")
    let configuration = S3Configuration(credentials: credentials)
    for text in [
        "\(credentials)", String(reflecting: credentials), "\(configuration)", String(reflecting: configuration),
        {
            var s = ""
            dump(configuration, to: &s)
            return s
        }(),
    ] {
        #expect(!text.contains("s3cr3t"), "\(text)")
        #expect(!text.contains("t0ken"), "\(text)")
        #expect(text.contains("AKID"))
    }
}
