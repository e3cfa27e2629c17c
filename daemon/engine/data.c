/* data.c -- tokenizers, vocabulary, train/val split, windows and token cache.
 *
 * Owns everything between a text file and the int32 windows the trainer
 * reads (see data.h and docs/model.md "Tokenizer and windows"). Invariants:
 * text is strict UTF-8 without NUL; lower-casing and whitespace follow
 * Python's str.lower().split() (Unicode 14 tables below, no locale); results
 * depend only on the file bytes and the options, so they can be cached under
 * an XXH64 key. Called by the trainer, generation and checkpoint code.
 */
#if !defined(_GNU_SOURCE) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif
#include "data.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include "nllm_math.h"

#define CACHE_MAGIC "NLLMTOK1"
#define CACHE_VERSION 1u
#define CACHE_HEADER 96u
#define DEFAULT_VAL_FRACTION 0.1

static const char *const special_names[4] = {"<pad>", "<unk>", "<bos>", "<eos>"};

/* ======================================================================
 * Unicode: Python's str.lower() and str.split() whitespace.
 *
 * Tables generated with CPython 3.11 (Unicode 14.0) from str.lower itself:
 *   lower_runs: every code point c with len(c.lower()) == 1 != c, as runs
 *     {first, count, stride, delta}: c = first + k*stride maps to c + delta.
 *     The one multi-character case, U+0130 -> "i\u0307", is coded by hand.
 *   cased / ignorable: the classes str.lower's Final_Sigma rule tests
 *     (cased: (c+"Σ").lower() ends in "ς"; ignorable: ("A"+c+"Σ").lower()
 *     ends in "ς" and c is not cased). A code point both cased and
 *     case-ignorable acts as ignorable there, so it is listed only as such.
 * ====================================================================== */

typedef struct { uint32_t first; uint16_t count; uint8_t stride; int32_t delta; } lower_run_t;
typedef struct { uint32_t lo, hi; } cp_range_t;

static const lower_run_t lower_runs[] = {
    {0x0041, 26, 1, 32}, {0x00C0, 23, 1, 32}, {0x00D8, 7, 1, 32}, {0x0100, 24, 2, 1},
    {0x0132, 3, 2, 1}, {0x0139, 8, 2, 1}, {0x014A, 23, 2, 1}, {0x0178, 1, 1, -121},
    {0x0179, 3, 2, 1}, {0x0181, 1, 1, 210}, {0x0182, 2, 2, 1}, {0x0186, 1, 1, 206},
    {0x0187, 1, 1, 1}, {0x0189, 2, 1, 205}, {0x018B, 1, 1, 1}, {0x018E, 1, 1, 79},
    {0x018F, 1, 1, 202}, {0x0190, 1, 1, 203}, {0x0191, 1, 1, 1}, {0x0193, 1, 1, 205},
    {0x0194, 1, 1, 207}, {0x0196, 1, 1, 211}, {0x0197, 1, 1, 209}, {0x0198, 1, 1, 1},
    {0x019C, 1, 1, 211}, {0x019D, 1, 1, 213}, {0x019F, 1, 1, 214}, {0x01A0, 3, 2, 1},
    {0x01A6, 1, 1, 218}, {0x01A7, 1, 1, 1}, {0x01A9, 1, 1, 218}, {0x01AC, 1, 1, 1},
    {0x01AE, 1, 1, 218}, {0x01AF, 1, 1, 1}, {0x01B1, 2, 1, 217}, {0x01B3, 2, 2, 1},
    {0x01B7, 1, 1, 219}, {0x01B8, 1, 1, 1}, {0x01BC, 1, 1, 1}, {0x01C4, 1, 1, 2},
    {0x01C5, 1, 1, 1}, {0x01C7, 1, 1, 2}, {0x01C8, 1, 1, 1}, {0x01CA, 1, 1, 2},
    {0x01CB, 9, 2, 1}, {0x01DE, 9, 2, 1}, {0x01F1, 1, 1, 2}, {0x01F2, 2, 2, 1},
    {0x01F6, 1, 1, -97}, {0x01F7, 1, 1, -56}, {0x01F8, 20, 2, 1}, {0x0220, 1, 1, -130},
    {0x0222, 9, 2, 1}, {0x023A, 1, 1, 10795}, {0x023B, 1, 1, 1}, {0x023D, 1, 1, -163},
    {0x023E, 1, 1, 10792}, {0x0241, 1, 1, 1}, {0x0243, 1, 1, -195}, {0x0244, 1, 1, 69},
    {0x0245, 1, 1, 71}, {0x0246, 5, 2, 1}, {0x0370, 2, 2, 1}, {0x0376, 1, 1, 1},
    {0x037F, 1, 1, 116}, {0x0386, 1, 1, 38}, {0x0388, 3, 1, 37}, {0x038C, 1, 1, 64},
    {0x038E, 2, 1, 63}, {0x0391, 17, 1, 32}, {0x03A3, 9, 1, 32}, {0x03CF, 1, 1, 8},
    {0x03D8, 12, 2, 1}, {0x03F4, 1, 1, -60}, {0x03F7, 1, 1, 1}, {0x03F9, 1, 1, -7},
    {0x03FA, 1, 1, 1}, {0x03FD, 3, 1, -130}, {0x0400, 16, 1, 80}, {0x0410, 32, 1, 32},
    {0x0460, 17, 2, 1}, {0x048A, 27, 2, 1}, {0x04C0, 1, 1, 15}, {0x04C1, 7, 2, 1},
    {0x04D0, 48, 2, 1}, {0x0531, 38, 1, 48}, {0x10A0, 38, 1, 7264}, {0x10C7, 1, 1, 7264},
    {0x10CD, 1, 1, 7264}, {0x13A0, 80, 1, 38864}, {0x13F0, 6, 1, 8}, {0x1C90, 43, 1, -3008},
    {0x1CBD, 3, 1, -3008}, {0x1E00, 75, 2, 1}, {0x1E9E, 1, 1, -7615}, {0x1EA0, 48, 2, 1},
    {0x1F08, 8, 1, -8}, {0x1F18, 6, 1, -8}, {0x1F28, 8, 1, -8}, {0x1F38, 8, 1, -8},
    {0x1F48, 6, 1, -8}, {0x1F59, 4, 2, -8}, {0x1F68, 8, 1, -8}, {0x1F88, 8, 1, -8},
    {0x1F98, 8, 1, -8}, {0x1FA8, 8, 1, -8}, {0x1FB8, 2, 1, -8}, {0x1FBA, 2, 1, -74},
    {0x1FBC, 1, 1, -9}, {0x1FC8, 4, 1, -86}, {0x1FCC, 1, 1, -9}, {0x1FD8, 2, 1, -8},
    {0x1FDA, 2, 1, -100}, {0x1FE8, 2, 1, -8}, {0x1FEA, 2, 1, -112}, {0x1FEC, 1, 1, -7},
    {0x1FF8, 2, 1, -128}, {0x1FFA, 2, 1, -126}, {0x1FFC, 1, 1, -9}, {0x2126, 1, 1, -7517},
    {0x212A, 1, 1, -8383}, {0x212B, 1, 1, -8262}, {0x2132, 1, 1, 28}, {0x2160, 16, 1, 16},
    {0x2183, 1, 1, 1}, {0x24B6, 26, 1, 26}, {0x2C00, 48, 1, 48}, {0x2C60, 1, 1, 1},
    {0x2C62, 1, 1, -10743}, {0x2C63, 1, 1, -3814}, {0x2C64, 1, 1, -10727}, {0x2C67, 3, 2, 1},
    {0x2C6D, 1, 1, -10780}, {0x2C6E, 1, 1, -10749}, {0x2C6F, 1, 1, -10783}, {0x2C70, 1, 1, -10782},
    {0x2C72, 1, 1, 1}, {0x2C75, 1, 1, 1}, {0x2C7E, 2, 1, -10815}, {0x2C80, 50, 2, 1},
    {0x2CEB, 2, 2, 1}, {0x2CF2, 1, 1, 1}, {0xA640, 23, 2, 1}, {0xA680, 14, 2, 1},
    {0xA722, 7, 2, 1}, {0xA732, 31, 2, 1}, {0xA779, 2, 2, 1}, {0xA77D, 1, 1, -35332},
    {0xA77E, 5, 2, 1}, {0xA78B, 1, 1, 1}, {0xA78D, 1, 1, -42280}, {0xA790, 2, 2, 1},
    {0xA796, 10, 2, 1}, {0xA7AA, 1, 1, -42308}, {0xA7AB, 1, 1, -42319}, {0xA7AC, 1, 1, -42315},
    {0xA7AD, 1, 1, -42305}, {0xA7AE, 1, 1, -42308}, {0xA7B0, 1, 1, -42258}, {0xA7B1, 1, 1, -42282},
    {0xA7B2, 1, 1, -42261}, {0xA7B3, 1, 1, 928}, {0xA7B4, 8, 2, 1}, {0xA7C4, 1, 1, -48},
    {0xA7C5, 1, 1, -42307}, {0xA7C6, 1, 1, -35384}, {0xA7C7, 2, 2, 1}, {0xA7D0, 1, 1, 1},
    {0xA7D6, 2, 2, 1}, {0xA7F5, 1, 1, 1}, {0xFF21, 26, 1, 32}, {0x10400, 40, 1, 40},
    {0x104B0, 36, 1, 40}, {0x10570, 11, 1, 39}, {0x1057C, 15, 1, 39}, {0x1058C, 7, 1, 39},
    {0x10594, 2, 1, 39}, {0x10C80, 51, 1, 64}, {0x118A0, 32, 1, 32}, {0x16E40, 32, 1, 32},
    {0x1E900, 34, 1, 34},
};

static const cp_range_t cased_ranges[] = {
    {0x0041, 0x005A}, {0x0061, 0x007A}, {0x00AA, 0x00AA}, {0x00B5, 0x00B5},
    {0x00BA, 0x00BA}, {0x00C0, 0x00D6}, {0x00D8, 0x00F6}, {0x00F8, 0x01BA},
    {0x01BC, 0x01BF}, {0x01C4, 0x0293}, {0x0295, 0x02AF}, {0x0370, 0x0373},
    {0x0376, 0x0377}, {0x037B, 0x037D}, {0x037F, 0x037F}, {0x0386, 0x0386},
    {0x0388, 0x038A}, {0x038C, 0x038C}, {0x038E, 0x03A1}, {0x03A3, 0x03F5},
    {0x03F7, 0x0481}, {0x048A, 0x052F}, {0x0531, 0x0556}, {0x0560, 0x0588},
    {0x10A0, 0x10C5}, {0x10C7, 0x10C7}, {0x10CD, 0x10CD}, {0x10D0, 0x10FA},
    {0x10FD, 0x10FF}, {0x13A0, 0x13F5}, {0x13F8, 0x13FD}, {0x1C80, 0x1C88},
    {0x1C90, 0x1CBA}, {0x1CBD, 0x1CBF}, {0x1D00, 0x1D2B}, {0x1D6B, 0x1D77},
    {0x1D79, 0x1D9A}, {0x1E00, 0x1F15}, {0x1F18, 0x1F1D}, {0x1F20, 0x1F45},
    {0x1F48, 0x1F4D}, {0x1F50, 0x1F57}, {0x1F59, 0x1F59}, {0x1F5B, 0x1F5B},
    {0x1F5D, 0x1F5D}, {0x1F5F, 0x1F7D}, {0x1F80, 0x1FB4}, {0x1FB6, 0x1FBC},
    {0x1FBE, 0x1FBE}, {0x1FC2, 0x1FC4}, {0x1FC6, 0x1FCC}, {0x1FD0, 0x1FD3},
    {0x1FD6, 0x1FDB}, {0x1FE0, 0x1FEC}, {0x1FF2, 0x1FF4}, {0x1FF6, 0x1FFC},
    {0x2102, 0x2102}, {0x2107, 0x2107}, {0x210A, 0x2113}, {0x2115, 0x2115},
    {0x2119, 0x211D}, {0x2124, 0x2124}, {0x2126, 0x2126}, {0x2128, 0x2128},
    {0x212A, 0x212D}, {0x212F, 0x2134}, {0x2139, 0x2139}, {0x213C, 0x213F},
    {0x2145, 0x2149}, {0x214E, 0x214E}, {0x2160, 0x217F}, {0x2183, 0x2184},
    {0x24B6, 0x24E9}, {0x2C00, 0x2C7B}, {0x2C7E, 0x2CE4}, {0x2CEB, 0x2CEE},
    {0x2CF2, 0x2CF3}, {0x2D00, 0x2D25}, {0x2D27, 0x2D27}, {0x2D2D, 0x2D2D},
    {0xA640, 0xA66D}, {0xA680, 0xA69B}, {0xA722, 0xA76F}, {0xA771, 0xA787},
    {0xA78B, 0xA78E}, {0xA790, 0xA7CA}, {0xA7D0, 0xA7D1}, {0xA7D3, 0xA7D3},
    {0xA7D5, 0xA7D9}, {0xA7F5, 0xA7F6}, {0xA7FA, 0xA7FA}, {0xAB30, 0xAB5A},
    {0xAB60, 0xAB68}, {0xAB70, 0xABBF}, {0xFB00, 0xFB06}, {0xFB13, 0xFB17},
    {0xFF21, 0xFF3A}, {0xFF41, 0xFF5A}, {0x10400, 0x1044F}, {0x104B0, 0x104D3},
    {0x104D8, 0x104FB}, {0x10570, 0x1057A}, {0x1057C, 0x1058A}, {0x1058C, 0x10592},
    {0x10594, 0x10595}, {0x10597, 0x105A1}, {0x105A3, 0x105B1}, {0x105B3, 0x105B9},
    {0x105BB, 0x105BC}, {0x10C80, 0x10CB2}, {0x10CC0, 0x10CF2}, {0x118A0, 0x118DF},
    {0x16E40, 0x16E7F}, {0x1D400, 0x1D454}, {0x1D456, 0x1D49C}, {0x1D49E, 0x1D49F},
    {0x1D4A2, 0x1D4A2}, {0x1D4A5, 0x1D4A6}, {0x1D4A9, 0x1D4AC}, {0x1D4AE, 0x1D4B9},
    {0x1D4BB, 0x1D4BB}, {0x1D4BD, 0x1D4C3}, {0x1D4C5, 0x1D505}, {0x1D507, 0x1D50A},
    {0x1D50D, 0x1D514}, {0x1D516, 0x1D51C}, {0x1D51E, 0x1D539}, {0x1D53B, 0x1D53E},
    {0x1D540, 0x1D544}, {0x1D546, 0x1D546}, {0x1D54A, 0x1D550}, {0x1D552, 0x1D6A5},
    {0x1D6A8, 0x1D6C0}, {0x1D6C2, 0x1D6DA}, {0x1D6DC, 0x1D6FA}, {0x1D6FC, 0x1D714},
    {0x1D716, 0x1D734}, {0x1D736, 0x1D74E}, {0x1D750, 0x1D76E}, {0x1D770, 0x1D788},
    {0x1D78A, 0x1D7A8}, {0x1D7AA, 0x1D7C2}, {0x1D7C4, 0x1D7CB}, {0x1DF00, 0x1DF09},
    {0x1DF0B, 0x1DF1E}, {0x1E900, 0x1E943}, {0x1F130, 0x1F149}, {0x1F150, 0x1F169},
    {0x1F170, 0x1F189},
};

static const cp_range_t ignorable_ranges[] = {
    {0x0027, 0x0027}, {0x002E, 0x002E}, {0x003A, 0x003A}, {0x005E, 0x005E},
    {0x0060, 0x0060}, {0x00A8, 0x00A8}, {0x00AD, 0x00AD}, {0x00AF, 0x00AF},
    {0x00B4, 0x00B4}, {0x00B7, 0x00B8}, {0x02B0, 0x036F}, {0x0374, 0x0375},
    {0x037A, 0x037A}, {0x0384, 0x0385}, {0x0387, 0x0387}, {0x0483, 0x0489},
    {0x0559, 0x0559}, {0x055F, 0x055F}, {0x0591, 0x05BD}, {0x05BF, 0x05BF},
    {0x05C1, 0x05C2}, {0x05C4, 0x05C5}, {0x05C7, 0x05C7}, {0x05F4, 0x05F4},
    {0x0600, 0x0605}, {0x0610, 0x061A}, {0x061C, 0x061C}, {0x0640, 0x0640},
    {0x064B, 0x065F}, {0x0670, 0x0670}, {0x06D6, 0x06DD}, {0x06DF, 0x06E8},
    {0x06EA, 0x06ED}, {0x070F, 0x070F}, {0x0711, 0x0711}, {0x0730, 0x074A},
    {0x07A6, 0x07B0}, {0x07EB, 0x07F5}, {0x07FA, 0x07FA}, {0x07FD, 0x07FD},
    {0x0816, 0x082D}, {0x0859, 0x085B}, {0x0888, 0x0888}, {0x0890, 0x0891},
    {0x0898, 0x089F}, {0x08C9, 0x0902}, {0x093A, 0x093A}, {0x093C, 0x093C},
    {0x0941, 0x0948}, {0x094D, 0x094D}, {0x0951, 0x0957}, {0x0962, 0x0963},
    {0x0971, 0x0971}, {0x0981, 0x0981}, {0x09BC, 0x09BC}, {0x09C1, 0x09C4},
    {0x09CD, 0x09CD}, {0x09E2, 0x09E3}, {0x09FE, 0x09FE}, {0x0A01, 0x0A02},
    {0x0A3C, 0x0A3C}, {0x0A41, 0x0A42}, {0x0A47, 0x0A48}, {0x0A4B, 0x0A4D},
    {0x0A51, 0x0A51}, {0x0A70, 0x0A71}, {0x0A75, 0x0A75}, {0x0A81, 0x0A82},
    {0x0ABC, 0x0ABC}, {0x0AC1, 0x0AC5}, {0x0AC7, 0x0AC8}, {0x0ACD, 0x0ACD},
    {0x0AE2, 0x0AE3}, {0x0AFA, 0x0AFF}, {0x0B01, 0x0B01}, {0x0B3C, 0x0B3C},
    {0x0B3F, 0x0B3F}, {0x0B41, 0x0B44}, {0x0B4D, 0x0B4D}, {0x0B55, 0x0B56},
    {0x0B62, 0x0B63}, {0x0B82, 0x0B82}, {0x0BC0, 0x0BC0}, {0x0BCD, 0x0BCD},
    {0x0C00, 0x0C00}, {0x0C04, 0x0C04}, {0x0C3C, 0x0C3C}, {0x0C3E, 0x0C40},
    {0x0C46, 0x0C48}, {0x0C4A, 0x0C4D}, {0x0C55, 0x0C56}, {0x0C62, 0x0C63},
    {0x0C81, 0x0C81}, {0x0CBC, 0x0CBC}, {0x0CBF, 0x0CBF}, {0x0CC6, 0x0CC6},
    {0x0CCC, 0x0CCD}, {0x0CE2, 0x0CE3}, {0x0D00, 0x0D01}, {0x0D3B, 0x0D3C},
    {0x0D41, 0x0D44}, {0x0D4D, 0x0D4D}, {0x0D62, 0x0D63}, {0x0D81, 0x0D81},
    {0x0DCA, 0x0DCA}, {0x0DD2, 0x0DD4}, {0x0DD6, 0x0DD6}, {0x0E31, 0x0E31},
    {0x0E34, 0x0E3A}, {0x0E46, 0x0E4E}, {0x0EB1, 0x0EB1}, {0x0EB4, 0x0EBC},
    {0x0EC6, 0x0EC6}, {0x0EC8, 0x0ECD}, {0x0F18, 0x0F19}, {0x0F35, 0x0F35},
    {0x0F37, 0x0F37}, {0x0F39, 0x0F39}, {0x0F71, 0x0F7E}, {0x0F80, 0x0F84},
    {0x0F86, 0x0F87}, {0x0F8D, 0x0F97}, {0x0F99, 0x0FBC}, {0x0FC6, 0x0FC6},
    {0x102D, 0x1030}, {0x1032, 0x1037}, {0x1039, 0x103A}, {0x103D, 0x103E},
    {0x1058, 0x1059}, {0x105E, 0x1060}, {0x1071, 0x1074}, {0x1082, 0x1082},
    {0x1085, 0x1086}, {0x108D, 0x108D}, {0x109D, 0x109D}, {0x10FC, 0x10FC},
    {0x135D, 0x135F}, {0x1712, 0x1714}, {0x1732, 0x1733}, {0x1752, 0x1753},
    {0x1772, 0x1773}, {0x17B4, 0x17B5}, {0x17B7, 0x17BD}, {0x17C6, 0x17C6},
    {0x17C9, 0x17D3}, {0x17D7, 0x17D7}, {0x17DD, 0x17DD}, {0x180B, 0x180F},
    {0x1843, 0x1843}, {0x1885, 0x1886}, {0x18A9, 0x18A9}, {0x1920, 0x1922},
    {0x1927, 0x1928}, {0x1932, 0x1932}, {0x1939, 0x193B}, {0x1A17, 0x1A18},
    {0x1A1B, 0x1A1B}, {0x1A56, 0x1A56}, {0x1A58, 0x1A5E}, {0x1A60, 0x1A60},
    {0x1A62, 0x1A62}, {0x1A65, 0x1A6C}, {0x1A73, 0x1A7C}, {0x1A7F, 0x1A7F},
    {0x1AA7, 0x1AA7}, {0x1AB0, 0x1ACE}, {0x1B00, 0x1B03}, {0x1B34, 0x1B34},
    {0x1B36, 0x1B3A}, {0x1B3C, 0x1B3C}, {0x1B42, 0x1B42}, {0x1B6B, 0x1B73},
    {0x1B80, 0x1B81}, {0x1BA2, 0x1BA5}, {0x1BA8, 0x1BA9}, {0x1BAB, 0x1BAD},
    {0x1BE6, 0x1BE6}, {0x1BE8, 0x1BE9}, {0x1BED, 0x1BED}, {0x1BEF, 0x1BF1},
    {0x1C2C, 0x1C33}, {0x1C36, 0x1C37}, {0x1C78, 0x1C7D}, {0x1CD0, 0x1CD2},
    {0x1CD4, 0x1CE0}, {0x1CE2, 0x1CE8}, {0x1CED, 0x1CED}, {0x1CF4, 0x1CF4},
    {0x1CF8, 0x1CF9}, {0x1D2C, 0x1D6A}, {0x1D78, 0x1D78}, {0x1D9B, 0x1DFF},
    {0x1FBD, 0x1FBD}, {0x1FBF, 0x1FC1}, {0x1FCD, 0x1FCF}, {0x1FDD, 0x1FDF},
    {0x1FED, 0x1FEF}, {0x1FFD, 0x1FFE}, {0x200B, 0x200F}, {0x2018, 0x2019},
    {0x2024, 0x2024}, {0x2027, 0x2027}, {0x202A, 0x202E}, {0x2060, 0x2064},
    {0x2066, 0x206F}, {0x2071, 0x2071}, {0x207F, 0x207F}, {0x2090, 0x209C},
    {0x20D0, 0x20F0}, {0x2C7C, 0x2C7D}, {0x2CEF, 0x2CF1}, {0x2D6F, 0x2D6F},
    {0x2D7F, 0x2D7F}, {0x2DE0, 0x2DFF}, {0x2E2F, 0x2E2F}, {0x3005, 0x3005},
    {0x302A, 0x302D}, {0x3031, 0x3035}, {0x303B, 0x303B}, {0x3099, 0x309E},
    {0x30FC, 0x30FE}, {0xA015, 0xA015}, {0xA4F8, 0xA4FD}, {0xA60C, 0xA60C},
    {0xA66F, 0xA672}, {0xA674, 0xA67D}, {0xA67F, 0xA67F}, {0xA69C, 0xA69F},
    {0xA6F0, 0xA6F1}, {0xA700, 0xA721}, {0xA770, 0xA770}, {0xA788, 0xA78A},
    {0xA7F2, 0xA7F4}, {0xA7F8, 0xA7F9}, {0xA802, 0xA802}, {0xA806, 0xA806},
    {0xA80B, 0xA80B}, {0xA825, 0xA826}, {0xA82C, 0xA82C}, {0xA8C4, 0xA8C5},
    {0xA8E0, 0xA8F1}, {0xA8FF, 0xA8FF}, {0xA926, 0xA92D}, {0xA947, 0xA951},
    {0xA980, 0xA982}, {0xA9B3, 0xA9B3}, {0xA9B6, 0xA9B9}, {0xA9BC, 0xA9BD},
    {0xA9CF, 0xA9CF}, {0xA9E5, 0xA9E6}, {0xAA29, 0xAA2E}, {0xAA31, 0xAA32},
    {0xAA35, 0xAA36}, {0xAA43, 0xAA43}, {0xAA4C, 0xAA4C}, {0xAA70, 0xAA70},
    {0xAA7C, 0xAA7C}, {0xAAB0, 0xAAB0}, {0xAAB2, 0xAAB4}, {0xAAB7, 0xAAB8},
    {0xAABE, 0xAABF}, {0xAAC1, 0xAAC1}, {0xAADD, 0xAADD}, {0xAAEC, 0xAAED},
    {0xAAF3, 0xAAF4}, {0xAAF6, 0xAAF6}, {0xAB5B, 0xAB5F}, {0xAB69, 0xAB6B},
    {0xABE5, 0xABE5}, {0xABE8, 0xABE8}, {0xABED, 0xABED}, {0xFB1E, 0xFB1E},
    {0xFBB2, 0xFBC2}, {0xFE00, 0xFE0F}, {0xFE13, 0xFE13}, {0xFE20, 0xFE2F},
    {0xFE52, 0xFE52}, {0xFE55, 0xFE55}, {0xFEFF, 0xFEFF}, {0xFF07, 0xFF07},
    {0xFF0E, 0xFF0E}, {0xFF1A, 0xFF1A}, {0xFF3E, 0xFF3E}, {0xFF40, 0xFF40},
    {0xFF70, 0xFF70}, {0xFF9E, 0xFF9F}, {0xFFE3, 0xFFE3}, {0xFFF9, 0xFFFB},
    {0x101FD, 0x101FD}, {0x102E0, 0x102E0}, {0x10376, 0x1037A}, {0x10780, 0x10785},
    {0x10787, 0x107B0}, {0x107B2, 0x107BA}, {0x10A01, 0x10A03}, {0x10A05, 0x10A06},
    {0x10A0C, 0x10A0F}, {0x10A38, 0x10A3A}, {0x10A3F, 0x10A3F}, {0x10AE5, 0x10AE6},
    {0x10D24, 0x10D27}, {0x10EAB, 0x10EAC}, {0x10F46, 0x10F50}, {0x10F82, 0x10F85},
    {0x11001, 0x11001}, {0x11038, 0x11046}, {0x11070, 0x11070}, {0x11073, 0x11074},
    {0x1107F, 0x11081}, {0x110B3, 0x110B6}, {0x110B9, 0x110BA}, {0x110BD, 0x110BD},
    {0x110C2, 0x110C2}, {0x110CD, 0x110CD}, {0x11100, 0x11102}, {0x11127, 0x1112B},
    {0x1112D, 0x11134}, {0x11173, 0x11173}, {0x11180, 0x11181}, {0x111B6, 0x111BE},
    {0x111C9, 0x111CC}, {0x111CF, 0x111CF}, {0x1122F, 0x11231}, {0x11234, 0x11234},
    {0x11236, 0x11237}, {0x1123E, 0x1123E}, {0x112DF, 0x112DF}, {0x112E3, 0x112EA},
    {0x11300, 0x11301}, {0x1133B, 0x1133C}, {0x11340, 0x11340}, {0x11366, 0x1136C},
    {0x11370, 0x11374}, {0x11438, 0x1143F}, {0x11442, 0x11444}, {0x11446, 0x11446},
    {0x1145E, 0x1145E}, {0x114B3, 0x114B8}, {0x114BA, 0x114BA}, {0x114BF, 0x114C0},
    {0x114C2, 0x114C3}, {0x115B2, 0x115B5}, {0x115BC, 0x115BD}, {0x115BF, 0x115C0},
    {0x115DC, 0x115DD}, {0x11633, 0x1163A}, {0x1163D, 0x1163D}, {0x1163F, 0x11640},
    {0x116AB, 0x116AB}, {0x116AD, 0x116AD}, {0x116B0, 0x116B5}, {0x116B7, 0x116B7},
    {0x1171D, 0x1171F}, {0x11722, 0x11725}, {0x11727, 0x1172B}, {0x1182F, 0x11837},
    {0x11839, 0x1183A}, {0x1193B, 0x1193C}, {0x1193E, 0x1193E}, {0x11943, 0x11943},
    {0x119D4, 0x119D7}, {0x119DA, 0x119DB}, {0x119E0, 0x119E0}, {0x11A01, 0x11A0A},
    {0x11A33, 0x11A38}, {0x11A3B, 0x11A3E}, {0x11A47, 0x11A47}, {0x11A51, 0x11A56},
    {0x11A59, 0x11A5B}, {0x11A8A, 0x11A96}, {0x11A98, 0x11A99}, {0x11C30, 0x11C36},
    {0x11C38, 0x11C3D}, {0x11C3F, 0x11C3F}, {0x11C92, 0x11CA7}, {0x11CAA, 0x11CB0},
    {0x11CB2, 0x11CB3}, {0x11CB5, 0x11CB6}, {0x11D31, 0x11D36}, {0x11D3A, 0x11D3A},
    {0x11D3C, 0x11D3D}, {0x11D3F, 0x11D45}, {0x11D47, 0x11D47}, {0x11D90, 0x11D91},
    {0x11D95, 0x11D95}, {0x11D97, 0x11D97}, {0x11EF3, 0x11EF4}, {0x13430, 0x13438},
    {0x16AF0, 0x16AF4}, {0x16B30, 0x16B36}, {0x16B40, 0x16B43}, {0x16F4F, 0x16F4F},
    {0x16F8F, 0x16F9F}, {0x16FE0, 0x16FE1}, {0x16FE3, 0x16FE4}, {0x1AFF0, 0x1AFF3},
    {0x1AFF5, 0x1AFFB}, {0x1AFFD, 0x1AFFE}, {0x1BC9D, 0x1BC9E}, {0x1BCA0, 0x1BCA3},
    {0x1CF00, 0x1CF2D}, {0x1CF30, 0x1CF46}, {0x1D167, 0x1D169}, {0x1D173, 0x1D182},
    {0x1D185, 0x1D18B}, {0x1D1AA, 0x1D1AD}, {0x1D242, 0x1D244}, {0x1DA00, 0x1DA36},
    {0x1DA3B, 0x1DA6C}, {0x1DA75, 0x1DA75}, {0x1DA84, 0x1DA84}, {0x1DA9B, 0x1DA9F},
    {0x1DAA1, 0x1DAAF}, {0x1E000, 0x1E006}, {0x1E008, 0x1E018}, {0x1E01B, 0x1E021},
    {0x1E023, 0x1E024}, {0x1E026, 0x1E02A}, {0x1E130, 0x1E13D}, {0x1E2AE, 0x1E2AE},
    {0x1E2EC, 0x1E2EF}, {0x1E8D0, 0x1E8D6}, {0x1E944, 0x1E94B}, {0x1F3FB, 0x1F3FF},
    {0xE0001, 0xE0001}, {0xE0020, 0xE007F}, {0xE0100, 0xE01EF},
};

static int in_ranges(const cp_range_t *r, size_t n, uint32_t cp)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < r[mid].lo)
            hi = mid;
        else if (cp > r[mid].hi)
            lo = mid + 1;
        else
            return 1;
    }
    return 0;
}

static int is_cased(uint32_t cp)
{
    return in_ranges(cased_ranges, sizeof cased_ranges / sizeof cased_ranges[0], cp);
}

static int is_ignorable(uint32_t cp)
{
    return in_ranges(ignorable_ranges, sizeof ignorable_ranges / sizeof ignorable_ranges[0], cp);
}

/* Simple (one code point) lowercase of cp. */
static uint32_t lower_cp(uint32_t cp)
{
    if (cp < 0x80)
        return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
    size_t lo = 0, hi = sizeof lower_runs / sizeof lower_runs[0];
    while (lo < hi) { /* last run with first <= cp */
        size_t mid = lo + (hi - lo) / 2;
        if (lower_runs[mid].first <= cp)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return cp;
    const lower_run_t *r = &lower_runs[lo - 1];
    uint32_t d = cp - r->first;
    if (d % r->stride == 0 && d / r->stride < r->count)
        return (uint32_t)((int32_t)cp + r->delta);
    return cp;
}

/* Decode one code point of valid UTF-8 at s[*i], advancing *i. */
static uint32_t u8_next(const uint8_t *s, size_t *i)
{
    uint32_t c = s[*i];
    if (c < 0x80) {
        *i += 1;
        return c;
    }
    if (c < 0xE0) {
        c = ((c & 0x1Fu) << 6) | (s[*i + 1] & 0x3Fu);
        *i += 2;
    } else if (c < 0xF0) {
        c = ((c & 0x0Fu) << 12) | ((s[*i + 1] & 0x3Fu) << 6) | (s[*i + 2] & 0x3Fu);
        *i += 3;
    } else {
        c = ((c & 0x07u) << 18) | ((s[*i + 1] & 0x3Fu) << 12) | ((s[*i + 2] & 0x3Fu) << 6) |
            (s[*i + 3] & 0x3Fu);
        *i += 4;
    }
    return c;
}

static size_t u8_put(uint32_t c, uint8_t *d)
{
    if (c < 0x80) {
        d[0] = (uint8_t)c;
        return 1;
    }
    if (c < 0x800) {
        d[0] = (uint8_t)(0xC0 | (c >> 6));
        d[1] = (uint8_t)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        d[0] = (uint8_t)(0xE0 | (c >> 12));
        d[1] = (uint8_t)(0x80 | ((c >> 6) & 0x3F));
        d[2] = (uint8_t)(0x80 | (c & 0x3F));
        return 3;
    }
    d[0] = (uint8_t)(0xF0 | (c >> 18));
    d[1] = (uint8_t)(0x80 | ((c >> 12) & 0x3F));
    d[2] = (uint8_t)(0x80 | ((c >> 6) & 0x3F));
    d[3] = (uint8_t)(0x80 | (c & 0x3F));
    return 4;
}

/* Python's str.isspace() set (what str.split() splits on). */
static int is_space_cp(uint32_t c)
{
    if (c < 0x80)
        return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20);
    return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
           c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* Byte length of the whitespace character at s[i] (valid UTF-8), 0 if none. */
static size_t space_len(const uint8_t *s, size_t i)
{
    uint8_t b = s[i];
    if (b < 0x80)
        return ((b >= 0x09 && b <= 0x0D) || (b >= 0x1C && b <= 0x20)) ? 1 : 0;
    if (b != 0xC2 && b != 0xE1 && b != 0xE2 && b != 0xE3)
        return 0;
    size_t j = i;
    uint32_t c = u8_next(s, &j);
    return is_space_cp(c) ? j - i : 0;
}

/* Next whitespace-separated word of s[*pos..n); 0 at the end. */
static int next_word(const uint8_t *s, size_t n, size_t *pos, size_t *start, size_t *len)
{
    size_t i = *pos, k;
    while (i < n && (k = space_len(s, i)) != 0)
        i += k;
    if (i >= n) {
        *pos = n;
        return 0;
    }
    *start = i;
    while (i < n && space_len(s, i) == 0) {
        uint8_t b = s[i];
        i += b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
    }
    *len = i - *start;
    *pos = i;
    return 1;
}

/* Final_Sigma: U+03A3 at s[at..after) lowers to final sigma when preceded by
 * a cased letter and not followed by one (case-ignorables skipped). Word
 * edges stand for whitespace, which is neither cased nor ignorable. */
static int sigma_is_final(const uint8_t *s, size_t n, size_t at, size_t after)
{
    size_t j = at;
    int final = 0;
    while (j > 0) {
        do
            j--;
        while (j > 0 && (s[j] & 0xC0) == 0x80);
        size_t k = j;
        uint32_t c = u8_next(s, &k);
        if (!is_ignorable(c)) {
            final = is_cased(c);
            break;
        }
    }
    if (!final)
        return 0;
    j = after;
    while (j < n) {
        uint32_t c = u8_next(s, &j);
        if (!is_ignorable(c))
            return !is_cased(c);
    }
    return 1;
}

size_t nllm_data_lower_word(const char *src, size_t len, char *dst)
{
    const uint8_t *s = (const uint8_t *)src;
    uint8_t *d = (uint8_t *)dst;
    size_t i = 0, o = 0;
    while (i < len) {
        uint8_t b = s[i];
        if (b < 0x80) {
            d[o++] = (b >= 'A' && b <= 'Z') ? (uint8_t)(b + 32) : b;
            i++;
            continue;
        }
        size_t at = i;
        uint32_t c = u8_next(s, &i);
        if (c == 0x130) { /* LATIN CAPITAL I WITH DOT ABOVE -> i + COMBINING DOT ABOVE */
            d[o++] = 'i';
            o += u8_put(0x307, d + o);
        } else if (c == 0x3A3) {
            o += u8_put(sigma_is_final(s, len, at, i) ? 0x3C2 : 0x3C3, d + o);
        } else {
            o += u8_put(lower_cp(c), d + o);
        }
    }
    return o;
}

/* ---- strict UTF-8 check (as Python's decoder), NUL rejected optionally -- */

typedef struct {
    int64_t off;  /* first bad byte, -1: none */
    int is_nul;   /* the bad byte is a NUL    */
    int64_t line; /* 1-based line of off      */
} u8_bad_t;

static u8_bad_t utf8_check(const uint8_t *s, size_t n, int reject_nul)
{
    u8_bad_t r = {-1, 0, 0};
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            if (c == 0 && reject_nul) {
                r.is_nul = 1;
                break;
            }
            i++;
            continue;
        }
        size_t need;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF)
            need = 1;
        else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0)
                lo = 0xA0; /* overlong */
            else if (c == 0xED)
                hi = 0x9F; /* surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0)
                lo = 0x90;
            else if (c == 0xF4)
                hi = 0x8F; /* above U+10FFFF */
        } else
            break;
        if (n - i <= need)
            break;
        if (s[i + 1] < lo || s[i + 1] > hi)
            break;
        size_t k;
        for (k = 2; k <= need; k++)
            if ((s[i + k] & 0xC0) != 0x80)
                break;
        if (k <= need)
            break;
        i += need + 1;
    }
    if (i < n) {
        r.off = (int64_t)i;
        r.line = 1;
        for (size_t k = 0; k < i; k++)
            r.line += s[k] == '\n';
    }
    return r;
}

/* ======================================================================
 * String interning (open addressing) for the words of the text files.
 * ====================================================================== */

typedef struct {
    char *arena; /* words, NUL-terminated, back to back */
    size_t alen, acap;
    size_t *off;      /* [n] */
    uint32_t *len;    /* [n] */
    uint64_t *hash;   /* [n] */
    uint32_t n, cap;  /* ids, capacity of the per-id arrays */
    uint32_t *slots;  /* id + 1, 0: empty */
    uint32_t nslots;  /* power of two, >= 2 n */
} strtab_t;

static void strtab_free(strtab_t *t)
{
    free(t->arena);
    free(t->off);
    free(t->len);
    free(t->hash);
    free(t->slots);
    memset(t, 0, sizeof *t);
}

static int strtab_rehash(strtab_t *t, uint32_t nslots)
{
    uint32_t *s = calloc(nslots, sizeof *s);
    if (!s)
        return NLLM_ENOMEM;
    for (uint32_t id = 0; id < t->n; id++) {
        uint32_t h = (uint32_t)t->hash[id] & (nslots - 1);
        while (s[h])
            h = (h + 1) & (nslots - 1);
        s[h] = id + 1;
    }
    free(t->slots);
    t->slots = s;
    t->nslots = nslots;
    return 0;
}

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t nc = *cap ? *cap : 16;
    while (nc < need) {
        if (nc > SIZE_MAX / 2 / elem)
            return NLLM_ENOMEM;
        nc *= 2;
    }
    void *q = realloc(*p, nc * elem);
    if (!q)
        return NLLM_ENOMEM;
    *p = q;
    *cap = nc;
    return 0;
}

static int strtab_intern(strtab_t *t, const char *w, size_t len, uint32_t *id)
{
    if (len > UINT32_MAX - 1)
        return NLLM_EINVAL;
    uint64_t h = XXH3_64bits(w, len);
    if (t->nslots) {
        uint32_t m = t->nslots - 1, i = (uint32_t)h & m;
        while (t->slots[i]) {
            uint32_t c = t->slots[i] - 1;
            if (t->hash[c] == h && t->len[c] == len && memcmp(t->arena + t->off[c], w, len) == 0) {
                *id = c;
                return 0;
            }
            i = (i + 1) & m;
        }
    }
    if (t->n >= UINT32_MAX / 4)
        return NLLM_ENOMEM;
    if (t->n + 1 > t->cap) {
        uint32_t nc = t->cap ? t->cap * 2 : 1024;
        size_t *o = realloc(t->off, (size_t)nc * sizeof *o);
        if (o)
            t->off = o;
        uint32_t *l = realloc(t->len, (size_t)nc * sizeof *l);
        if (l)
            t->len = l;
        uint64_t *hh = realloc(t->hash, (size_t)nc * sizeof *hh);
        if (hh)
            t->hash = hh;
        if (!o || !l || !hh)
            return NLLM_ENOMEM;
        t->cap = nc;
    }
    size_t acap = t->acap;
    void *arena = t->arena;
    if (grow(&arena, &acap, t->alen + len + 1, 1))
        return NLLM_ENOMEM;
    t->arena = arena;
    t->acap = acap;
    memcpy(t->arena + t->alen, w, len);
    t->arena[t->alen + len] = '\0';
    uint32_t c = t->n++;
    t->off[c] = t->alen;
    t->len[c] = (uint32_t)len;
    t->hash[c] = h;
    t->alen += len + 1;
    if ((uint64_t)t->n * 2 > t->nslots) {
        if (strtab_rehash(t, t->nslots ? t->nslots * 2 : 4096)) {
            t->n--;
            return NLLM_ENOMEM;
        }
    } else {
        uint32_t m = t->nslots - 1, i = (uint32_t)h & m;
        while (t->slots[i])
            i = (i + 1) & m;
        t->slots[i] = c + 1;
    }
    *id = c;
    return 0;
}

/* ======================================================================
 * Vocabulary.
 * ====================================================================== */

void nllm_vocab_free(nllm_vocab_t *v)
{
    if (!v)
        return;
    free(v->words);
    free(v->lens);
    free(v->strs);
    free(v->slots);
    memset(v, 0, sizeof *v);
}

static void vocab_init_bytes(nllm_vocab_t *v)
{
    memset(v, 0, sizeof *v);
    v->kind = NLLM_TOK_BYTE;
    v->vocab_size = NLLM_BYTE_VOCAB;
}

static int ndigits(int32_t x)
{
    int d = 1;
    while (x >= 10) {
        x /= 10;
        d++;
    }
    return d;
}

/* Word vocabulary of size V from n_words words (ids 4..), which must be
 * distinct. what names the source for messages ("vocabulary JSON" ...). */
static int vocab_build(nllm_vocab_t *v, int32_t V, const char *const *w, const uint32_t *wl,
                       int32_t n_words, const char *what, nllm_err_t *err)
{
    memset(v, 0, sizeof *v);
    if (n_words < 0 || (int64_t)n_words > (int64_t)V - NLLM_WORD_FIRST)
        return nllm_err_set(err, NLLM_EINVAL, "%s: %d words do not fit vocab_size %d", what,
                            n_words, V);
    size_t total = 0;
    for (int i = 0; i < 4; i++)
        total += strlen(special_names[i]) + 1;
    for (int32_t i = 0; i < n_words; i++)
        total += (size_t)wl[i] + 1;
    for (int32_t id = NLLM_WORD_FIRST + n_words; id < V; id++)
        total += sizeof "<unused->" + (size_t)ndigits(id);
    uint32_t ns = 8;
    while (ns < 2u * (uint32_t)n_words + 2u)
        ns *= 2;
    v->kind = NLLM_TOK_WORD;
    v->vocab_size = V;
    v->n_words = n_words;
    v->words = malloc((size_t)V * sizeof *v->words);
    v->lens = malloc((size_t)V * sizeof *v->lens);
    v->strs = malloc(total);
    v->slots = malloc((size_t)ns * sizeof *v->slots);
    v->nslots = ns;
    if (!v->words || !v->lens || !v->strs || !v->slots) {
        nllm_vocab_free(v);
        return nllm_err_set(err, NLLM_ENOMEM, "%s: out of memory for %d vocabulary entries",
                            what, V);
    }
    memset(v->slots, 0xFF, (size_t)ns * sizeof *v->slots);
    char *p = v->strs;
    for (int32_t id = 0; id < V; id++) {
        size_t l;
        if (id < NLLM_WORD_FIRST) {
            l = strlen(special_names[id]);
            memcpy(p, special_names[id], l + 1);
        } else if (id < NLLM_WORD_FIRST + n_words) {
            l = wl[id - NLLM_WORD_FIRST];
            memcpy(p, w[id - NLLM_WORD_FIRST], l);
            p[l] = '\0';
        } else {
            l = (size_t)sprintf(p, "<unused-%d>", id);
        }
        v->words[id] = p;
        v->lens[id] = (uint32_t)l;
        p += l + 1;
        if (id < NLLM_WORD_FIRST || id >= NLLM_WORD_FIRST + n_words)
            continue;
        uint32_t m = ns - 1, h = (uint32_t)XXH3_64bits(v->words[id], l) & m;
        while (v->slots[h] >= 0) {
            int32_t o = v->slots[h];
            if (v->lens[o] == l && memcmp(v->words[o], v->words[id], l) == 0) {
                nllm_err_set(err, NLLM_EINVAL, "%s: word '%s' appears twice (ids %d and %d)",
                             what, v->words[id], o, id);
                nllm_vocab_free(v);
                return NLLM_EINVAL;
            }
            h = (h + 1) & m;
        }
        v->slots[h] = id;
    }
    return 0;
}

int32_t nllm_vocab_lookup(const nllm_vocab_t *v, const char *word, size_t len)
{
    if (!v || v->kind != NLLM_TOK_WORD || !v->slots || !v->nslots)
        return -1;
    uint32_t m = v->nslots - 1, h = (uint32_t)XXH3_64bits(word, len) & m;
    while (v->slots[h] >= 0) {
        int32_t id = v->slots[h];
        if (v->lens[id] == len && memcmp(v->words[id], word, len) == 0)
            return id;
        h = (h + 1) & m;
    }
    return -1;
}

int nllm_vocab_to_json(const nllm_vocab_t *v, json_t **out, nllm_err_t *err)
{
    *out = NULL;
    json_t *o = json_object();
    if (!o)
        return nllm_err_set(err, NLLM_ENOMEM, "vocabulary JSON: out of memory");
    int bad = json_object_set_new(o, "kind",
                                  json_string(v->kind == NLLM_TOK_BYTE ? "byte" : "word"));
    bad |= json_object_set_new(o, "vocab_size", json_integer(v->vocab_size));
    if (v->kind == NLLM_TOK_WORD) {
        json_t *a = json_array();
        bad |= json_object_set_new(o, "words", a);
        for (int32_t i = 0; !bad && i < v->n_words; i++)
            bad |= json_array_append_new(
                a, json_stringn(v->words[NLLM_WORD_FIRST + i], v->lens[NLLM_WORD_FIRST + i]));
    }
    if (bad) {
        json_decref(o);
        return nllm_err_set(err, NLLM_ENOMEM, "vocabulary JSON: out of memory");
    }
    *out = o;
    return 0;
}

int nllm_vocab_from_json(const json_t *j, nllm_vocab_t *out, nllm_err_t *err)
{
    memset(out, 0, sizeof *out);
    if (!json_is_object(j))
        return nllm_err_set(err, NLLM_EINVAL,
                            "vocabulary JSON: not an object; the checkpoint metadata is damaged");
    const char *kind = json_string_value(json_object_get(j, "kind"));
    json_t *jv = json_object_get(j, "vocab_size");
    if (!kind || (strcmp(kind, "word") && strcmp(kind, "byte")))
        return nllm_err_set(err, NLLM_EINVAL,
                            "vocabulary JSON: field 'kind' must be \"word\" or \"byte\"");
    if (!json_is_integer(jv))
        return nllm_err_set(err, NLLM_EINVAL,
                            "vocabulary JSON: field 'vocab_size' is missing or not an integer");
    json_int_t V = json_integer_value(jv);
    if (!strcmp(kind, "byte")) {
        json_t *w = json_object_get(j, "words");
        if (V != NLLM_BYTE_VOCAB)
            return nllm_err_set(err, NLLM_EINVAL,
                                "vocabulary JSON: field 'vocab_size' is %lld, the byte "
                                "tokenizer has %d ids",
                                (long long)V, NLLM_BYTE_VOCAB);
        if (w && !(json_is_array(w) && json_array_size(w) == 0))
            return nllm_err_set(err, NLLM_EINVAL,
                                "vocabulary JSON: field 'words' must be absent for kind byte");
        vocab_init_bytes(out);
        return 0;
    }
    if (V < NLLM_VOCAB_MIN || V > NLLM_VOCAB_MAX)
        return nllm_err_set(err, NLLM_EINVAL,
                            "vocabulary JSON: field 'vocab_size' %lld is outside %d..%d",
                            (long long)V, NLLM_VOCAB_MIN, NLLM_VOCAB_MAX);
    json_t *a = json_object_get(j, "words");
    if (!json_is_array(a))
        return nllm_err_set(err, NLLM_EINVAL,
                            "vocabulary JSON: field 'words' is missing or not an array");
    size_t n = json_array_size(a);
    if (n > (size_t)V - NLLM_WORD_FIRST)
        return nllm_err_set(err, NLLM_EINVAL,
                            "vocabulary JSON: field 'words' has %zu entries, more than "
                            "vocab_size %lld - 4",
                            n, (long long)V);
    const char **w = malloc((n ? n : 1) * sizeof *w);
    uint32_t *wl = malloc((n ? n : 1) * sizeof *wl);
    char *low = NULL;
    size_t lowcap = 0;
    int rc = 0;
    if (!w || !wl) {
        rc = nllm_err_set(err, NLLM_ENOMEM, "vocabulary JSON: out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *s = json_array_get(a, i);
        w[i] = json_string_value(s);
        size_t l = w[i] ? json_string_length(s) : 0;
        if (!w[i] || l == 0 || l > UINT32_MAX - 1 || memchr(w[i], 0, l)) {
            rc = nllm_err_set(err, NLLM_EINVAL,
                              "vocabulary JSON: words[%zu] is not a non-empty string "
                              "without NUL",
                              i);
            goto done;
        }
        size_t p = 0, st, sl;
        if (!next_word((const uint8_t *)w[i], l, &p, &st, &sl) || st != 0 || sl != l) {
            rc = nllm_err_set(err, NLLM_EINVAL,
                              "vocabulary JSON: words[%zu] '%s' contains whitespace; the word "
                              "tokenizer splits on it, so it could never be produced",
                              i, w[i]);
            goto done;
        }
        void *lp = low;
        if (grow(&lp, &lowcap, 3 * l / 2 + 4, 1)) {
            rc = nllm_err_set(err, NLLM_ENOMEM, "vocabulary JSON: out of memory");
            goto done;
        }
        low = lp;
        if (nllm_data_lower_word(w[i], l, low) != l || memcmp(low, w[i], l)) {
            rc = nllm_err_set(err, NLLM_EINVAL,
                              "vocabulary JSON: words[%zu] '%s' is not lower-case; the word "
                              "tokenizer lower-cases text, so it could never be produced",
                              i, w[i]);
            goto done;
        }
        wl[i] = (uint32_t)l;
    }
    rc = vocab_build(out, (int32_t)V, w, wl, (int32_t)n, "vocabulary JSON", err);
done:
    free(w);
    free(wl);
    free(low);
    return rc;
}

/* ======================================================================
 * Encode / decode (generation prompts and output).
 * ====================================================================== */

int nllm_vocab_encode(const nllm_vocab_t *v, const char *text, size_t len, int32_t **ids,
                      int64_t *n, nllm_err_t *err)
{
    *ids = NULL;
    *n = 0;
    const uint8_t *s = (const uint8_t *)text;
    if (v->kind == NLLM_TOK_BYTE) {
        int32_t *r = malloc((len ? len : 1) * sizeof *r);
        if (!r)
            return nllm_err_set(err, NLLM_ENOMEM, "encode: out of memory for %zu bytes", len);
        for (size_t i = 0; i < len; i++)
            r[i] = NLLM_BYTE_FIRST + s[i];
        *ids = r;
        *n = (int64_t)len;
        return 0;
    }
    if (!v->slots)
        return nllm_err_set(err, NLLM_EINVAL, "encode: the vocabulary is empty (not loaded)");
    u8_bad_t bad = utf8_check(s, len, 0);
    if (bad.off >= 0)
        return nllm_err_set(err, NLLM_EINVAL,
                            "encode: prompt is not valid UTF-8 at byte offset %lld (line %lld): "
                            "send UTF-8 text",
                            (long long)bad.off, (long long)bad.line);
    int32_t *r = malloc((len / 2 + 1) * sizeof *r);
    char *low = malloc(3 * len / 2 + 4);
    if (!r || !low) {
        free(r);
        free(low);
        return nllm_err_set(err, NLLM_ENOMEM, "encode: out of memory for %zu bytes", len);
    }
    size_t pos = 0, st, wl;
    int64_t k = 0;
    while (next_word(s, len, &pos, &st, &wl)) {
        size_t ll = nllm_data_lower_word(text + st, wl, low);
        int32_t id = nllm_vocab_lookup(v, low, ll);
        r[k++] = id < 0 ? NLLM_WORD_UNK : id;
    }
    free(low);
    *ids = r;
    *n = k;
    return 0;
}

int nllm_vocab_decode(const nllm_vocab_t *v, const int32_t *ids, int64_t n, char **text,
                      nllm_err_t *err)
{
    *text = NULL;
    size_t total = 1;
    for (int64_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= v->vocab_size)
            return nllm_err_set(err, NLLM_EINVAL,
                                "decode: token id %d at position %lld is outside 0..%d",
                                id, (long long)i, v->vocab_size - 1);
        if (v->kind == NLLM_TOK_BYTE)
            total += id >= NLLM_BYTE_FIRST;
        else if (id >= NLLM_WORD_FIRST && id < NLLM_WORD_FIRST + v->n_words)
            total += (size_t)v->lens[id] + 1;
    }
    char *t = malloc(total);
    if (!t)
        return nllm_err_set(err, NLLM_ENOMEM, "decode: out of memory for %zu bytes", total);
    size_t o = 0;
    for (int64_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (v->kind == NLLM_TOK_BYTE) {
            if (id >= NLLM_BYTE_FIRST)
                t[o++] = (char)(uint8_t)(id - NLLM_BYTE_FIRST);
        } else if (id >= NLLM_WORD_FIRST && id < NLLM_WORD_FIRST + v->n_words) {
            if (o)
                t[o++] = ' ';
            memcpy(t + o, v->words[id], v->lens[id]);
            o += v->lens[id];
        }
    }
    t[o] = '\0';
    *text = t;
    return 0;
}

/* ======================================================================
 * Files.
 * ====================================================================== */

typedef struct {
    const char *role; /* "train file", "validation file" */
    const char *flag; /* "--train", "--val"              */
    const char *path;
    uint8_t *buf;
    size_t n;
} textfile_t;

static int read_text(textfile_t *f, nllm_err_t *err)
{
    int fd = open(f->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return nllm_err_set(err, e == ENOENT ? NLLM_ENOENT : NLLM_EIO,
                            "%s %s: cannot open: %s; check the path given with %s", f->role,
                            f->path, strerror(e), f->flag);
    }
    struct stat st;
    int have_st = fstat(fd, &st) == 0;
    if (have_st && S_ISDIR(st.st_mode)) {
        close(fd);
        return nllm_err_set(err, NLLM_EINVAL, "%s %s: is a directory; give a text file with %s",
                            f->role, f->path, f->flag);
    }
    size_t cap = 65536; /* regular files: their size, +1 to see the end in one read */
    if (have_st && S_ISREG(st.st_mode) && st.st_size > 0 && (uint64_t)st.st_size < SIZE_MAX)
        cap = (size_t)st.st_size + 1;
    uint8_t *b = malloc(cap);
    size_t n = 0;
    int rc = 0;
    if (!b) {
        rc = nllm_err_set(err, NLLM_ENOMEM, "%s %s: out of memory for %zu bytes", f->role,
                          f->path, cap);
        goto out;
    }
    for (;;) {
        if (n == cap) {
            void *p = b;
            if (grow(&p, &cap, cap + 1, 1)) {
                rc = nllm_err_set(err, NLLM_ENOMEM, "%s %s: out of memory after %zu bytes",
                                  f->role, f->path, n);
                goto out;
            }
            b = p;
        }
        ssize_t r = read(fd, b + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = nllm_err_set(err, NLLM_EIO, "%s %s: cannot read: %s", f->role, f->path,
                              strerror(errno));
            goto out;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    if (n == 0) {
        rc = nllm_err_set(err, NLLM_EINVAL,
                          "%s %s is empty: give a text file with lines of at least 5 words",
                          f->role, f->path);
        goto out;
    }
    u8_bad_t bad = utf8_check(b, n, 1);
    if (bad.off >= 0) {
        if (bad.is_nul)
            rc = nllm_err_set(err, NLLM_EINVAL,
                              "%s %s contains a NUL byte at byte offset %lld (line %lld): it is "
                              "not a text file",
                              f->role, f->path, (long long)bad.off, (long long)bad.line);
        else
            rc = nllm_err_set(err, NLLM_EINVAL,
                              "%s %s is not valid UTF-8 at byte offset %lld (line %lld): "
                              "convert it to UTF-8 (e.g. iconv -t UTF-8)",
                              f->role, f->path, (long long)bad.off, (long long)bad.line);
    }
out:
    close(fd);
    if (rc) {
        free(b);
        return rc;
    }
    f->buf = b;
    f->n = n;
    return 0;
}

/* ======================================================================
 * Paragraphs and windows.
 * ====================================================================== */

typedef struct {
    int64_t off; /* word kind: first entry in the temp-id array; byte: byte offset */
    int64_t len; /* words or bytes (no bos/eos)                                    */
} para_t;

typedef struct {
    para_t *p;
    size_t n, cap;
} paras_t;

typedef struct {
    uint32_t *v;
    size_t n, cap;
} u32vec_t;

#define PARA_MIN_WORDS 5

/* Split f into lines, keep those of >= 5 words. Word kind interns the
 * lower-cased words into st and appends their temp ids to toks. */
static int scan_paragraphs(nllm_tok_kind_t kind, const textfile_t *f, strtab_t *st,
                           u32vec_t *toks, paras_t *out, nllm_err_t *err)
{
    const uint8_t *s = f->buf;
    size_t n = f->n, ls = 0;
    char *low = NULL;
    size_t lowcap = 0;
    int rc = 0;
    while (ls < n) {
        const uint8_t *nl = memchr(s + ls, '\n', n - ls);
        size_t le = nl ? (size_t)(nl - s) : n, next = nl ? le + 1 : n;
        if (le > ls && s[le - 1] == '\r')
            le--;
        size_t pos = 0, ws, wl;
        int words = 0;
        while (words < PARA_MIN_WORDS && next_word(s + ls, le - ls, &pos, &ws, &wl))
            words++;
        if (words >= PARA_MIN_WORDS) {
            void *pp = out->p;
            if (grow(&pp, &out->cap, out->n + 1, sizeof *out->p))
                goto oom;
            out->p = pp;
            para_t *p = &out->p[out->n++];
            if (kind == NLLM_TOK_BYTE) {
                p->off = (int64_t)ls;
                p->len = (int64_t)(le - ls);
            } else {
                p->off = (int64_t)toks->n;
                pos = 0;
                while (next_word(s + ls, le - ls, &pos, &ws, &wl)) {
                    void *lp = low;
                    if (grow(&lp, &lowcap, 3 * wl / 2 + 4, 1))
                        goto oom;
                    low = lp;
                    size_t ll = nllm_data_lower_word((const char *)s + ls + ws, wl, low);
                    uint32_t id;
                    if (strtab_intern(st, low, ll, &id))
                        goto oom;
                    void *tp = toks->v;
                    if (grow(&tp, &toks->cap, toks->n + 1, sizeof *toks->v))
                        goto oom;
                    toks->v = tp;
                    toks->v[toks->n++] = id;
                }
                p->len = (int64_t)toks->n - p->off;
            }
        }
        ls = next;
    }
    if (out->n == 0)
        rc = nllm_err_set(err, NLLM_EINVAL,
                          "%s %s has no line of at least 5 words (each such line is one "
                          "paragraph; shorter lines are dropped): add text",
                          f->role, f->path);
    free(low);
    return rc;
oom:
    free(low);
    return nllm_err_set(err, NLLM_ENOMEM, "%s %s: out of memory while tokenizing", f->role,
                        f->path);
}

static int64_t windows_of(int64_t L, int32_t S)
{
    return L <= S ? 1 : (L - S) / (S / 2) + 1;
}

/* Where a paragraph's tokens come from. */
typedef struct {
    nllm_tok_kind_t kind;
    const uint8_t *bytes;   /* byte kind: the file                 */
    const uint32_t *toks;   /* word kind: temp ids                 */
    const int32_t *map;     /* word kind: temp id -> vocabulary id */
} tok_src_t;

/* Windows of the paragraphs ps[i] with sel == NULL or sel[i] == want. */
static int make_windows(const tok_src_t *src, int32_t S, const para_t *ps, size_t np,
                        const uint8_t *sel, uint8_t want, nllm_windows_t *w, const char *what,
                        nllm_err_t *err)
{
    int64_t nw = 0, maxL = 0;
    for (size_t i = 0; i < np; i++) {
        if (sel && sel[i] != want)
            continue;
        int64_t L = ps[i].len + 2;
        nw += windows_of(L, S);
        if (L > maxL)
            maxL = L;
    }
    w->seq_len = S;
    w->n = nw;
    w->ids = NULL;
    if (nw == 0)
        return 0;
    if ((uint64_t)nw > SIZE_MAX / sizeof(int32_t) / (uint64_t)S)
        return nllm_err_set(err, NLLM_ENOMEM, "%s: %lld windows of %d tokens do not fit memory",
                            what, (long long)nw, S);
    w->ids = calloc((size_t)nw * (size_t)S, sizeof *w->ids);
    int32_t *tok = malloc((size_t)maxL * sizeof *tok);
    if (!w->ids || !tok) {
        free(w->ids);
        free(tok);
        w->ids = NULL;
        w->n = 0;
        return nllm_err_set(err, NLLM_ENOMEM, "%s: out of memory for %lld windows of %d tokens",
                            what, (long long)nw, S);
    }
    int32_t *dst = w->ids;
    for (size_t i = 0; i < np; i++) {
        if (sel && sel[i] != want)
            continue;
        int64_t n = ps[i].len, L = n + 2;
        if (src->kind == NLLM_TOK_BYTE) {
            tok[0] = NLLM_BYTE_BOS;
            for (int64_t k = 0; k < n; k++)
                tok[1 + k] = NLLM_BYTE_FIRST + src->bytes[ps[i].off + k];
            tok[L - 1] = NLLM_BYTE_EOS;
        } else {
            tok[0] = NLLM_WORD_BOS;
            for (int64_t k = 0; k < n; k++)
                tok[1 + k] = src->map[src->toks[ps[i].off + k]];
            tok[L - 1] = NLLM_WORD_EOS;
        }
        if (L <= S) {
            memcpy(dst, tok, (size_t)L * sizeof *tok); /* rest stays <pad> = 0 */
            dst += S;
        } else {
            for (int64_t start = 0; start + S <= L; start += S / 2) {
                memcpy(dst, tok + start, (size_t)S * sizeof *tok);
                dst += S;
            }
        }
    }
    free(tok);
    return 0;
}

/* rng < frac * 2^64, as an integer threshold: r < t (real) iff r < ceil(t). */
static int is_val_paragraph(uint64_t seed, uint64_t i, double frac)
{
    double t = ceil(ldexp(frac, 64));
    if (t >= 18446744073709551616.0)
        return 1;
    return nllm_rng_u64(seed, NLLM_STREAM_VALSPLIT, 0, i) < (uint64_t)t;
}

typedef struct {
    int64_t count, first;
    uint32_t id;
} freq_t;

static int freq_cmp(const void *a, const void *b)
{
    const freq_t *x = a, *y = b;
    if (x->count != y->count)
        return x->count > y->count ? -1 : 1;
    return (x->first > y->first) - (x->first < y->first);
}

/* Tokenize and window the text files (no cache involved). */
static int tokenize(const nllm_data_opts_t *o, int32_t V, double frac, const textfile_t *tf,
                    const textfile_t *vf, nllm_dataset_t *out, nllm_err_t *err)
{
    strtab_t st = {0};
    u32vec_t toks = {0};
    paras_t tp = {0}, vp = {0};
    uint8_t *is_val = NULL;
    int64_t *cnt = NULL, *first = NULL;
    freq_t *fr = NULL;
    int32_t *map = NULL;
    const char **wp = NULL;
    int rc;
    if ((rc = scan_paragraphs(o->kind, tf, &st, &toks, &tp, err)))
        goto done;
    if (vf && (rc = scan_paragraphs(o->kind, vf, &st, &toks, &vp, err)))
        goto done;
    is_val = calloc(tp.n, 1);
    if (!is_val)
        goto oom;
    int64_t nval = 0;
    if (!vf) {
        for (size_t i = 0; i < tp.n; i++)
            nval += is_val[i] = (uint8_t)is_val_paragraph(o->seed, i, frac);
        if (nval == 0) {
            rc = nllm_err_set(err, NLLM_EINVAL,
                              "%s %s: the validation split (val_fraction %g, seed %llu) took "
                              "none of its %zu paragraphs, which leaves zero validation "
                              "windows: pass a validation file with --val, raise val_fraction "
                              "or add text",
                              tf->role, tf->path, frac, (unsigned long long)o->seed, tp.n);
            goto done;
        }
    } else {
        nval = (int64_t)vp.n;
    }
    out->train_paragraphs = (int64_t)tp.n - (vf ? 0 : nval);
    out->val_paragraphs = nval;
    for (size_t i = 0; i < tp.n; i++)
        if (!is_val[i])
            out->train_tokens += tp.p[i].len;

    tok_src_t src = {o->kind, NULL, NULL, NULL};
    if (o->kind == NLLM_TOK_BYTE) {
        vocab_init_bytes(&out->vocab);
    } else if (o->vocab) {
        /* fixed vocabulary: map every distinct word through it */
        size_t nt = st.n ? st.n : 1;
        map = malloc(nt * sizeof *map);
        if (!map)
            goto oom;
        for (uint32_t id = 0; id < st.n; id++) {
            int32_t w = nllm_vocab_lookup(o->vocab, st.arena + st.off[id], st.len[id]);
            map[id] = w < 0 ? NLLM_WORD_UNK : w;
        }
        for (size_t i = 0; i < tp.n; i++)
            if (!is_val[i])
                for (int64_t k = 0; k < tp.p[i].len; k++)
                    out->train_tokens_unk += map[toks.v[tp.p[i].off + k]] == NLLM_WORD_UNK;
        json_t *j = NULL;
        if ((rc = nllm_vocab_to_json(o->vocab, &j, err)) ||
            (rc = nllm_vocab_from_json(j, &out->vocab, err))) {
            json_decref(j);
            goto done;
        }
        json_decref(j);
        src.toks = toks.v;
        src.map = map;
    } else {
        /* frequencies over the training paragraphs, ties by first position */
        size_t nt = st.n ? st.n : 1;
        cnt = calloc(nt, sizeof *cnt);
        first = malloc(nt * sizeof *first);
        map = malloc(nt * sizeof *map);
        if (!cnt || !first || !map)
            goto oom;
        int64_t pos = 0;
        size_t ncand = 0;
        for (size_t i = 0; i < tp.n; i++) {
            if (is_val[i])
                continue;
            for (int64_t k = 0; k < tp.p[i].len; k++, pos++) {
                uint32_t id = toks.v[tp.p[i].off + k];
                if (cnt[id]++ == 0) {
                    first[id] = pos;
                    ncand++;
                }
            }
        }
        fr = malloc((ncand ? ncand : 1) * sizeof *fr);
        if (!fr)
            goto oom;
        size_t c = 0;
        for (uint32_t id = 0; id < st.n; id++) {
            map[id] = NLLM_WORD_UNK;
            if (cnt[id])
                fr[c++] = (freq_t){cnt[id], first[id], id};
        }
        qsort(fr, ncand, sizeof *fr, freq_cmp);
        size_t nw = ncand < (size_t)(V - NLLM_WORD_FIRST) ? ncand : (size_t)(V - NLLM_WORD_FIRST);
        wp = malloc((nw ? nw : 1) * sizeof *wp);
        uint32_t *wl = malloc((nw ? nw : 1) * sizeof *wl);
        if (!wp || !wl) {
            free(wl);
            goto oom;
        }
        for (size_t r = 0; r < nw; r++) {
            map[fr[r].id] = NLLM_WORD_FIRST + (int32_t)r;
            wp[r] = st.arena + st.off[fr[r].id];
            wl[r] = st.len[fr[r].id];
        }
        for (size_t r = nw; r < ncand; r++)
            out->train_tokens_unk += fr[r].count;
        rc = vocab_build(&out->vocab, V, wp, wl, (int32_t)nw, tf->path, err);
        free(wl);
        if (rc)
            goto done;
        src.toks = toks.v;
        src.map = map;
    }
    src.bytes = tf->buf;
    if ((rc = make_windows(&src, o->seq_len, tp.p, tp.n, is_val, 0, &out->train, tf->path, err)))
        goto done;
    if (vf) {
        src.bytes = vf->buf;
        rc = make_windows(&src, o->seq_len, vp.p, vp.n, NULL, 0, &out->val, vf->path, err);
    } else {
        rc = make_windows(&src, o->seq_len, tp.p, tp.n, is_val, 1, &out->val, tf->path, err);
    }
    goto done;
oom:
    rc = nllm_err_set(err, NLLM_ENOMEM, "%s %s: out of memory while building the vocabulary",
                      tf->role, tf->path);
done:
    strtab_free(&st);
    free(toks.v);
    free(tp.p);
    free(vp.p);
    free(is_val);
    free(cnt);
    free(first);
    free(fr);
    free(map);
    free(wp);
    return rc;
}

/* ======================================================================
 * Token cache. Layout (little-endian), offsets in bytes:
 *   0 "NLLMTOK1"   8 u32 version   12 u32 kind   16 u64 key
 *  24 i32 vocab_size   28 i32 seq_len   32 i32 n_words   36 u32 0
 *  40 i64 train_paragraphs  48 i64 val_paragraphs  56 i64 train_tokens
 *  64 i64 train_tokens_unk  72 i64 n_train  80 i64 n_val  88 u64 words_bytes
 *  96 words (n_words NUL-terminated strings, words_bytes in all)
 *     i32 train ids [n_train * seq_len], i32 val ids [n_val * seq_len]
 *  end-8 u64 XXH64 (seed 0) of every byte before it
 * ====================================================================== */

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_u32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)p[i] << (8 * i);
    return v;
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static void key_u64(XXH64_state_t *s, uint64_t v)
{
    uint8_t b[8];
    put_u64(b, v);
    XXH64_update(s, b, 8);
}

/* Everything the result depends on: format, options, the file bytes.
 * -1 when no hash state could be allocated (then the cache is not used). */
static int cache_key(const nllm_data_opts_t *o, int32_t V, double frac, const textfile_t *tf,
                     const textfile_t *vf, uint64_t *key)
{
    XXH64_state_t *s = XXH64_createState();
    if (!s)
        return -1;
    static const char tag[] = "nllm token cache key: v1, unicode 14, python lower/split";
    XXH64_reset(s, 0);
    XXH64_update(s, tag, sizeof tag);
    key_u64(s, CACHE_VERSION);
    key_u64(s, (uint64_t)o->kind);
    key_u64(s, (uint64_t)(uint32_t)V);
    key_u64(s, (uint64_t)(uint32_t)o->seq_len);
    key_u64(s, vf != NULL);
    if (!vf) { /* the split only matters without a validation file */
        uint64_t fb;
        memcpy(&fb, &frac, sizeof fb);
        key_u64(s, o->seed);
        key_u64(s, fb);
    }
    key_u64(s, o->vocab != NULL);
    if (o->vocab && o->vocab->kind == NLLM_TOK_WORD)
        for (int32_t i = NLLM_WORD_FIRST; i < NLLM_WORD_FIRST + o->vocab->n_words; i++) {
            key_u64(s, o->vocab->lens[i]);
            XXH64_update(s, o->vocab->words[i], o->vocab->lens[i]);
        }
    key_u64(s, tf->n);
    XXH64_update(s, tf->buf, tf->n);
    if (vf) {
        key_u64(s, vf->n);
        XXH64_update(s, vf->buf, vf->n);
    }
    *key = XXH64_digest(s);
    XXH64_freeState(s);
    return 0;
}

static int read_i32s(const uint8_t *p, int64_t n, int32_t V, int32_t **out)
{
    *out = NULL;
    if (n == 0)
        return 0;
    int32_t *a = malloc((size_t)n * sizeof *a);
    if (!a)
        return -1;
    for (int64_t i = 0; i < n; i++) {
        int32_t v = (int32_t)get_u32(p + 4 * i);
        if (v < 0 || v >= V) {
            free(a);
            return -1;
        }
        a[i] = v;
    }
    *out = a;
    return 0;
}

/* 0: out filled from the cache; -1: no usable cache (missing, corrupt, stale). */
static int cache_read(const char *path, uint64_t key, const nllm_data_opts_t *o, int32_t V,
                      nllm_dataset_t *out)
{
    struct { uint8_t *buf; size_t n; } f = {NULL, 0};
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < CACHE_HEADER + 8 ||
        (uint64_t)st.st_size > SIZE_MAX) {
        close(fd);
        return -1;
    }
    f.n = (size_t)st.st_size;
    f.buf = malloc(f.n);
    size_t got = 0;
    while (f.buf && got < f.n) {
        ssize_t r = read(fd, f.buf + got, f.n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    int rc = -1;
    const uint8_t *b = f.buf;
    if (!b || got != f.n)
        goto out;
    if (XXH64(b, f.n - 8, 0) != get_u64(b + f.n - 8))
        goto out;
    if (memcmp(b, CACHE_MAGIC, 8) || get_u32(b + 8) != CACHE_VERSION ||
        get_u32(b + 12) != (uint32_t)o->kind || get_u64(b + 16) != key ||
        (int32_t)get_u32(b + 24) != V || (int32_t)get_u32(b + 28) != o->seq_len)
        goto out;
    int32_t nw = (int32_t)get_u32(b + 32);
    int64_t tpar = (int64_t)get_u64(b + 40), vpar = (int64_t)get_u64(b + 48);
    int64_t ttok = (int64_t)get_u64(b + 56), tunk = (int64_t)get_u64(b + 64);
    int64_t ntr = (int64_t)get_u64(b + 72), nva = (int64_t)get_u64(b + 80);
    uint64_t wbytes = get_u64(b + 88);
    uint64_t S = (uint64_t)o->seq_len;
    if (tpar < 0 || vpar < 0 || ttok < 0 || tunk < 0 || ntr < 0 || nva < 0 || nw < 0 ||
        (o->kind == NLLM_TOK_BYTE && nw != 0) || (int64_t)nw > (int64_t)V - NLLM_WORD_FIRST)
        goto out;
    uint64_t room = f.n - CACHE_HEADER - 8;
    if (wbytes > room || (uint64_t)ntr > room / 4 / S || (uint64_t)nva > room / 4 / S ||
        wbytes + ((uint64_t)ntr + (uint64_t)nva) * S * 4 != room)
        goto out;
    const uint8_t *wb = b + CACHE_HEADER;
    if (o->kind == NLLM_TOK_WORD) {
        const char **w = malloc(((size_t)nw + 1) * sizeof *w);
        uint32_t *wl = malloc(((size_t)nw + 1) * sizeof *wl);
        size_t p = 0;
        int ok = w && wl;
        for (int32_t i = 0; ok && i < nw; i++) {
            const uint8_t *z = memchr(wb + p, 0, wbytes - p);
            if (!z || z == wb + p) {
                ok = 0;
                break;
            }
            w[i] = (const char *)wb + p;
            wl[i] = (uint32_t)(z - (wb + p));
            p += wl[i] + 1;
        }
        ok = ok && p == wbytes &&
             vocab_build(&out->vocab, V, w, wl, nw, "token cache", NULL) == 0;
        free(w);
        free(wl);
        if (!ok)
            goto out;
    } else {
        if (wbytes != 0)
            goto out;
        vocab_init_bytes(&out->vocab);
    }
    const uint8_t *ib = wb + wbytes;
    out->train.seq_len = out->val.seq_len = o->seq_len;
    out->train.n = ntr;
    out->val.n = nva;
    if (read_i32s(ib, ntr * (int64_t)S, V, &out->train.ids) ||
        read_i32s(ib + (size_t)ntr * S * 4, nva * (int64_t)S, V, &out->val.ids)) {
        nllm_data_free(out);
        goto out;
    }
    out->train_paragraphs = tpar;
    out->val_paragraphs = vpar;
    out->train_tokens = ttok;
    out->train_tokens_unk = tunk;
    rc = 0;
out:
    free(f.buf);
    return rc;
}

typedef struct {
    int fd;
    uint8_t buf[1 << 16];
    size_t n;
    XXH64_state_t *h;
    int err; /* errno of the first failed write */
} wbuf_t;

static void wb_flush(wbuf_t *w)
{
    size_t o = 0;
    while (!w->err && o < w->n) {
        ssize_t r = write(w->fd, w->buf + o, w->n - o);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            w->err = errno;
        else
            o += (size_t)r;
    }
    w->n = 0;
}

static void wb_put(wbuf_t *w, const void *p, size_t n)
{
    const uint8_t *s = p;
    XXH64_update(w->h, s, n);
    while (n) {
        size_t k = sizeof w->buf - w->n < n ? sizeof w->buf - w->n : n;
        memcpy(w->buf + w->n, s, k);
        w->n += k;
        s += k;
        n -= k;
        if (w->n == sizeof w->buf)
            wb_flush(w);
    }
}

static void wb_i32s(wbuf_t *w, const int32_t *a, int64_t n)
{
    uint8_t t[4096];
    while (n > 0) {
        int64_t k = n < 1024 ? n : 1024;
        for (int64_t i = 0; i < k; i++)
            put_u32(t + 4 * i, (uint32_t)a[i]);
        wb_put(w, t, (size_t)k * 4);
        a += k;
        n -= k;
    }
}

static int fsync_dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    if (!dir)
        return ENOMEM;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), e = 0;
    free(dir);
    if (fd < 0)
        return errno;
    if (fsync(fd) != 0)
        e = errno;
    close(fd);
    return e;
}

/* Write the cache atomically: temp file in the same folder, fsync, rename,
 * fsync the folder. Failure leaves the old file (if any) in place. The temp
 * file is named as fsutil.h's nllm_fs_write_atomic names its own,
 * "<dir>/.<base>.tmp.<pid>.<n>", so that the start-up cleanup
 * (nllm_fs_remove_temp_files on the job folder) removes one a crash left, and
 * a name without the leading dot can never be taken for a cache. Not
 * nllm_fs_write_atomic itself: its writes and fsyncs count towards the
 * NLLM_FS_FAULT hooks, which the reliability campaigns aim at checkpoint
 * saves (faults.py: "write #1" is a checkpoint header). */
static int cache_write(const char *path, uint64_t key, const nllm_data_opts_t *o,
                       const nllm_dataset_t *d, nllm_err_t *err)
{
    static atomic_uint counter;
    char tmp[PATH_MAX];
    const char *slash = strrchr(path, '/');
    int dlen = slash ? (int)(slash - path) + 1 : 0; /* the folder with its '/' */
    if (snprintf(tmp, sizeof tmp, "%.*s.%s.tmp.%ld.%u", dlen, path, path + dlen, (long)getpid(),
                 atomic_fetch_add(&counter, 1)) >= (int)sizeof tmp)
        return nllm_err_set(err, NLLM_EINVAL, "token cache %s: path too long", path);
    wbuf_t *w = malloc(sizeof *w);
    if (!w)
        return nllm_err_set(err, NLLM_ENOMEM, "token cache %s: out of memory", path);
    w->n = 0;
    w->err = 0;
    w->h = XXH64_createState();
    w->fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (w->fd < 0 || !w->h) {
        int e = w->fd < 0 ? errno : ENOMEM;
        if (w->fd >= 0) {
            close(w->fd);
            unlink(tmp);
        }
        XXH64_freeState(w->h);
        free(w);
        return nllm_err_set(err, NLLM_EIO, "token cache %s: cannot create %s: %s", path, tmp,
                            strerror(e));
    }
    XXH64_reset(w->h, 0);
    const nllm_vocab_t *v = &d->vocab;
    uint64_t wbytes = 0;
    for (int32_t i = 0; i < v->n_words; i++)
        wbytes += v->lens[NLLM_WORD_FIRST + i] + 1u;
    uint8_t h[CACHE_HEADER] = {0};
    memcpy(h, CACHE_MAGIC, 8);
    put_u32(h + 8, CACHE_VERSION);
    put_u32(h + 12, (uint32_t)o->kind);
    put_u64(h + 16, key);
    put_u32(h + 24, (uint32_t)v->vocab_size);
    put_u32(h + 28, (uint32_t)o->seq_len);
    put_u32(h + 32, (uint32_t)v->n_words);
    put_u64(h + 40, (uint64_t)d->train_paragraphs);
    put_u64(h + 48, (uint64_t)d->val_paragraphs);
    put_u64(h + 56, (uint64_t)d->train_tokens);
    put_u64(h + 64, (uint64_t)d->train_tokens_unk);
    put_u64(h + 72, (uint64_t)d->train.n);
    put_u64(h + 80, (uint64_t)d->val.n);
    put_u64(h + 88, wbytes);
    wb_put(w, h, sizeof h);
    for (int32_t i = 0; i < v->n_words; i++)
        wb_put(w, v->words[NLLM_WORD_FIRST + i], v->lens[NLLM_WORD_FIRST + i] + 1u);
    wb_i32s(w, d->train.ids, d->train.n * o->seq_len);
    wb_i32s(w, d->val.ids, d->val.n * o->seq_len);
    uint8_t tail[8];
    put_u64(tail, XXH64_digest(w->h));
    wb_put(w, tail, 8);
    wb_flush(w);
    int e = w->err;
    if (!e && fsync(w->fd) != 0)
        e = errno;
    if (close(w->fd) != 0 && !e)
        e = errno;
    XXH64_freeState(w->h);
    free(w);
    if (!e && rename(tmp, path) != 0)
        e = errno;
    if (e) {
        unlink(tmp);
        return nllm_err_set(err, e == ENOSPC ? NLLM_ENOSPC : NLLM_EIO,
                            "token cache %s: cannot write it: %s; training goes on without it",
                            path, strerror(e));
    }
    if ((e = fsync_dir_of(path)) != 0)
        return nllm_err_set(err, NLLM_EIO,
                            "token cache %s: written, but syncing its folder failed: %s", path,
                            strerror(e));
    return 0;
}

/* ======================================================================
 * Load, free, shuffle.
 * ====================================================================== */

void nllm_data_opts_init(nllm_data_opts_t *o)
{
    memset(o, 0, sizeof *o);
    o->kind = NLLM_TOK_WORD;
    o->vocab_size = 1000;
    o->seq_len = 64;
    o->batch = 512;
    o->seed = 42;
    o->val_fraction = DEFAULT_VAL_FRACTION;
}

void nllm_data_free(nllm_dataset_t *d)
{
    if (!d)
        return;
    nllm_vocab_free(&d->vocab);
    free(d->train.ids);
    free(d->val.ids);
    memset(d, 0, sizeof *d);
}

static int check_opts(const nllm_data_opts_t *o, int32_t *V, double *frac, nllm_err_t *err)
{
    if (!o->train_path || !*o->train_path)
        return nllm_err_set(err, NLLM_EINVAL,
                            "data options: train_path is not set: give the training text "
                            "with --train");
    if (o->kind != NLLM_TOK_WORD && o->kind != NLLM_TOK_BYTE)
        return nllm_err_set(err, NLLM_EINVAL,
                            "data options: tokenizer kind %d is unknown: use word or byte",
                            (int)o->kind);
    if (o->kind == NLLM_TOK_BYTE) {
        if (o->vocab_size != 0 && o->vocab_size != NLLM_BYTE_VOCAB)
            return nllm_err_set(err, NLLM_EINVAL,
                                "data options: vocab_size %d does not match the byte "
                                "tokenizer, which has %d ids: set vocab_size to %d",
                                o->vocab_size, NLLM_BYTE_VOCAB, NLLM_BYTE_VOCAB);
        *V = NLLM_BYTE_VOCAB;
    } else {
        if (o->vocab_size < NLLM_VOCAB_MIN)
            return nllm_err_set(err, NLLM_EINVAL,
                                "data options: vocab_size %d is below 5 (4 special tokens and "
                                "at least one word): raise --vocab",
                                o->vocab_size);
        if (o->vocab_size > NLLM_VOCAB_MAX)
            return nllm_err_set(err, NLLM_EINVAL,
                                "data options: vocab_size %d is above %d: lower --vocab",
                                o->vocab_size, NLLM_VOCAB_MAX);
        *V = o->vocab_size;
    }
    if (o->seq_len < NLLM_SEQ_MIN || o->seq_len > NLLM_SEQ_MAX)
        return nllm_err_set(err, NLLM_EINVAL,
                            "data options: seq_len %d is outside 2..65536: set max_seq_length "
                            "in that range",
                            o->seq_len);
    if (o->batch < 1)
        return nllm_err_set(err, NLLM_EINVAL,
                            "data options: batch %d is below 1: set --batch to at least 1",
                            o->batch);
    if (!(o->val_fraction >= 0.0 && o->val_fraction < 1.0))
        return nllm_err_set(err, NLLM_EINVAL,
                            "data options: val_fraction %g is outside [0, 1): use e.g. 0.1",
                            o->val_fraction);
    *frac = o->val_fraction == 0.0 ? DEFAULT_VAL_FRACTION : o->val_fraction;
    return 0;
}

int nllm_data_load(const nllm_data_opts_t *o, nllm_dataset_t *out, nllm_err_t *err)
{
    memset(out, 0, sizeof *out);
    nllm_err_clear(err);
    int32_t V = 0;
    double frac = 0;
    int rc = check_opts(o, &V, &frac, err);
    if (rc)
        return rc;
    if (o->vocab && (o->vocab->kind != o->kind || o->vocab->vocab_size != V))
        return nllm_err_set(err, NLLM_EMISMATCH,
                            "data options: the given %s vocabulary has %d ids but the job asks "
                            "for a %s tokenizer with vocab_size %d: use the source's settings",
                            o->vocab->kind == NLLM_TOK_BYTE ? "byte" : "word",
                            o->vocab->vocab_size, o->kind == NLLM_TOK_BYTE ? "byte" : "word", V);
    textfile_t tf = {"train file", "--train", o->train_path, NULL, 0};
    textfile_t vf = {"validation file", "--val", o->val_path, NULL, 0};
    const textfile_t *vfp = o->val_path ? &vf : NULL;
    if ((rc = read_text(&tf, err)) || (vfp && (rc = read_text(&vf, err))))
        goto done;
    uint64_t key = 0;
    int use_cache = o->cache_path && cache_key(o, V, frac, &tf, vfp, &key) == 0;
    if (o->cache_path && !use_cache)
        nllm_err_set(&out->cache_err, NLLM_ENOMEM,
                     "token cache %s: out of memory for its key; not used", o->cache_path);
    if (use_cache && cache_read(o->cache_path, key, o, V, out) == 0) {
        out->from_cache = 1;
    } else if ((rc = tokenize(o, V, frac, &tf, vfp, out, err))) {
        goto done;
    }
    if (out->val.n == 0) { /* unreachable from tokenize; guards a hand-made cache */
        rc = nllm_err_set(err, NLLM_EINVAL, "%s %s gives no validation windows: pass --val FILE",
                          tf.role, tf.path);
        goto done;
    }
    if (use_cache && !out->from_cache)
        cache_write(o->cache_path, key, o, out, &out->cache_err);
    if (out->train.n < o->batch)
        rc = nllm_err_set(err, NLLM_EINVAL,
                          "%s gives %lld windows of %d tokens, fewer than one batch of %d: "
                          "lower --batch or add text",
                          tf.path, (long long)out->train.n, o->seq_len, o->batch);
done:
    free(tf.buf);
    free(vf.buf);
    if (rc)
        nllm_data_free(out);
    return rc;
}

void nllm_data_shuffle(uint64_t seed, uint64_t epoch, int64_t n, int64_t *perm)
{
    for (int64_t i = 0; i < n; i++)
        perm[i] = i;
    for (int64_t i = n - 1; i >= 1; i--) {
        int64_t j = (int64_t)nllm_rng_below(seed, NLLM_STREAM_SHUFFLE, (uint32_t)epoch,
                                            (uint64_t)i, (uint64_t)i + 1);
        int64_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}
