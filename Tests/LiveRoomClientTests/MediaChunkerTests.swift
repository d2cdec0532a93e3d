import XCTest

@testable import LiveRoomClient

final class MediaChunkerTests: XCTestCase {
    func flvTag(type: UInt8, body: [UInt8]) -> [UInt8] {
        let n = body.count
        var t: [UInt8] = [type, UInt8(n >> 16), UInt8((n >> 8) & 0xFF), UInt8(n & 0xFF), 0, 0, 0, 0, 0, 0, 0]
        t += body
        let total = 11 + n
        t += [UInt8(total >> 24), UInt8((total >> 16) & 0xFF), UInt8((total >> 8) & 0xFF), UInt8(total & 0xFF)]
        return t
    }

    func testFLVHeadersAndKeyframes() {
        let header: [UInt8] = Array("FLV".utf8) + [1, 5, 0, 0, 0, 9, 0, 0, 0, 0]
        let meta = flvTag(type: 18, body: [2, 0, 10])
        let avcConfig = flvTag(type: 9, body: [0x17, 0, 0, 0, 0, 1, 2])
        let aacConfig = flvTag(type: 8, body: [0xAF, 0, 0x12, 0x10])
        let key = flvTag(type: 9, body: [0x17, 1, 0, 0, 0, 9, 9, 9])
        let inter = flvTag(type: 9, body: [0x27, 1, 0, 0, 0, 8])
        let audio = flvTag(type: 8, body: [0xAF, 1, 5, 5])
        let stream = header + meta + avcConfig + aacConfig + key + inter + audio
        var chunker = MediaChunker(chunkSize: 1024)
        // Fed in awkward pieces, the tags still come out whole.
        var pieces: [MediaChunker.Piece] = []
        var i = 0
        while i < stream.count {
            pieces += chunker.feed(Array(stream[i..<min(i + 7, stream.count)]))
            i += 7
        }
        pieces += chunker.flush()
        XCTAssertEqual(pieces.map(\.bytes).reduce([], +), stream, "nothing lost or reordered")
        XCTAssertEqual(pieces.map(\.header), [true, true, true, true, false, false, false])
        XCTAssertEqual(pieces.map(\.keyframe), [false, false, false, false, true, false, false])
    }

    func tsPacket(rai: Bool, fill: UInt8) -> [UInt8] {
        var p: [UInt8] = [0x47, 0x41, 0x00, rai ? 0x30 : 0x10]
        if rai { p += [1, 0x40] }
        p += [UInt8](repeating: fill, count: 188 - p.count)
        return p
    }

    func testMPEGTSCutsAtRandomAccessPoints() {
        let stream = tsPacket(rai: true, fill: 1) + tsPacket(rai: false, fill: 2) + tsPacket(rai: false, fill: 3)
            + tsPacket(rai: true, fill: 4) + tsPacket(rai: false, fill: 5)
        var chunker = MediaChunker(chunkSize: 64 * 1024)
        var pieces = chunker.feed(stream)
        pieces += chunker.flush()
        XCTAssertEqual(pieces.map(\.bytes.count), [3 * 188, 2 * 188])
        XCTAssertEqual(pieces.map(\.keyframe), [true, true])
        XCTAssertEqual(pieces.map(\.bytes).reduce([], +), stream)
    }

    func testOpaqueInputIsChunkedWithEveryChunkAKeyframe() {
        var chunker = MediaChunker(chunkSize: 1024)
        let data = [UInt8](repeating: 0x11, count: 2500)
        var pieces = chunker.feed(data)
        pieces += chunker.flush()
        XCTAssertEqual(pieces.map(\.bytes.count), [1024, 1024, 452])
        XCTAssertTrue(pieces.allSatisfy(\.keyframe))
    }
}
