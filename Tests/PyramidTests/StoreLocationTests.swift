import Testing

@testable import Pyramid

@Test(
    "Store names: folders and s3:// URLs",
    arguments: [
        ("store", StoreLocation.folder("store")),
        ("/srv/dallage/store", .folder("/srv/dallage/store")),
        ("./s3:old", .folder("./s3:old")),
        ("demo/store", .folder("demo/store")),
        ("C:", .folder("C:")),
        ("s3://bars", .s3(bucket: "bars", prefix: "")),
        ("s3://bars/", .s3(bucket: "bars", prefix: "")),
        ("s3://bars/store", .s3(bucket: "bars", prefix: "store")),
        ("s3://bars/pcrs/2024/", .s3(bucket: "bars", prefix: "pcrs/2024")),
        ("S3://my.bucket-1/a b", .s3(bucket: "my.bucket-1", prefix: "a b")),
    ])
func storeLocations(_ text: String, _ location: StoreLocation) throws {
    #expect(try StoreLocation(parsing: text) == location)
}

@Test(
    "URLs of other schemes and malformed s3 URLs are errors, never folder names",
    arguments: [
        "", "http://bars/store", "https://s3.amazonaws.com/bars", "gs://bars/store", "file:///srv/store",
        "file:store", "s3:/bars/store", "s3:bars", "s3://", "s3:///store", "s3://Bars/store", "s3://b/store",
        "s3://bars/a//b", "s3://bars/../x", "s3://bars/store?x=1", "s3://-bars", "s3://bars_1", "minio+s3://bars",
    ])
func storeLocationsRefused(_ text: String) {
    #expect(throws: StoreLocationError.self) { try StoreLocation(parsing: text) }
}

@Test func aStoreReadsBackAsWritten() throws {
    for text in ["store", "s3://bars", "s3://bars/pcrs/2024"] {
        #expect(try StoreLocation(parsing: text).description == text)
    }
    #expect(try StoreLocation(parsing: "s3://bars/pcrs/").description == "s3://bars/pcrs")
}

@Test func anOtherSchemeSaysWhatAStoreIs() {
    #expect(
        throws: StoreLocationError(
            text: "gs://bars", reason: "'gs://' is not a store scheme: a store is a local folder or s3://bucket/prefix")
    ) { try StoreLocation(parsing: "gs://bars") }
    #expect(
        throws: StoreLocationError(
            text: "backup:2024",
            reason:
                "'backup:' is not a store scheme: a store is a local folder or s3://bucket/prefix (a folder whose name has a colon is written ./backup:2024)"
        )
    ) { try StoreLocation(parsing: "backup:2024") }
}
