"""Common English words that are not digits, for teaching a digit classifier what
"unknown" sounds like (speech-classify's `unknown_words`); a second list, never
trained on, to set the "not a word" output's operating point on validation
(`word_accept_rate`); a third, never trained on nor validated on, to measure it
(`test_word_false_accept`); and a fourth, FRESH, that no run reads: the recipe's rate
was chosen looking at the third list's figures, so `pipeline.tasks.speech.word_rates`
also measures each rate on words that chose nothing.

Homophones of a digit word (four: for, fore; two: to, too; eight: ate; one: won;
zero: oh) are in neither list: from the sound alone they are that digit, so the model
may call them one. Near rhymes (tree, fine, heaven, ...) are left out of both too: one
phone from a digit, they would teach the unknown output the digits' own sounds.
"""

from __future__ import annotations

HOMOPHONES = {"zero": ("oh", "o"), "one": ("won",), "two": ("to", "too"),
              "four": ("for", "fore"), "eight": ("ate",)}
NEAR_RHYMES = ("hero", "sun", "done", "none", "fun", "tree", "free", "sea", "through",
               "door", "more", "floor", "poor", "drive", "hive", "alive", "fix", "mix",
               "sticks", "heaven", "seven", "late", "gate", "wait", "great", "fine", "line",
               "mine", "nice", "wine", "sign", "ten", "when", "then", "sex")
TRAINING = (
    "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "house", "bird",
    "cat", "dog", "bed", "happy", "wow", "marvin", "sheila", "learn", "follow", "forward",
    "backward", "visual", "apple", "water", "paper", "table", "window", "music", "garden",
    "market", "winter", "summer", "yellow", "purple", "orange", "silver", "morning",
    "evening", "question", "answer", "people", "family", "teacher", "doctor", "number",
    "letter", "picture", "story", "money", "city", "country", "river", "mountain", "island",
    "forest", "animal", "chicken", "coffee", "butter", "bottle", "kitchen", "pocket",
    "button", "rocket", "planet", "engine", "camera", "radio", "signal", "system",
    "problem", "future", "history", "office", "station", "airport", "hotel", "travel",
    "simple", "little", "quick", "slow", "open", "close", "small", "large", "black",
    "white", "green", "blue", "red", "light", "dark", "cold", "warm", "hello", "thanks",
    "please", "maybe", "always", "never", "often", "today", "tomorrow", "yesterday",
    "because", "about", "after", "before", "under", "over", "between", "inside",
    "outside", "behind", "around", "again", "almost", "already", "enough", "every",
    "friend", "world", "school", "garage", "health", "energy", "power", "language",
    "computer", "phone", "pencil", "shoulder", "finger", "baby", "monkey", "tiger",
    "zebra", "lemon", "potato", "tomato", "banana", "cookie", "candle", "basket",
)
HELD_OUT = (
    "umbrella", "bicycle", "library", "blanket", "jacket", "carpet", "ladder", "mirror",
    "pillow", "wallet", "hammer", "kettle", "rabbit", "turtle", "parrot", "dolphin",
    "spider", "horse", "sheep", "goat", "bread", "cheese", "honey", "sugar", "pepper",
    "salad", "pizza", "sandwich", "orchard", "village", "bridge", "castle", "tower",
    "valley", "desert", "ocean", "thunder", "rainbow", "shadow", "whisper", "journey",
    "magic", "secret", "silent", "gentle", "brave", "clever", "lucky", "empty", "heavy",
)
VALIDATION = (
    "garlic", "carrot", "pumpkin", "cherry", "peanut", "noodle", "biscuit", "muffin",
    "yogurt", "lizard", "beetle", "donkey", "penguin", "camel", "puppy", "squirrel",
    "walrus", "falcon", "lantern", "compass", "helmet", "bucket", "shovel", "ribbon",
    "whistle", "violin", "guitar", "trumpet", "painter", "farmer", "sailor", "pilot",
    "soldier", "dancer", "harbor", "canyon", "meadow", "glacier", "volcano", "jungle",
    "prairie", "cottage", "chimney", "balcony", "elbow", "ankle", "muscle", "stomach",
    "necklace", "feather",
)
FRESH = (
    "anchor", "blossom", "cabinet", "diamond", "eagle", "fountain", "giraffe", "hammock",
    "iceberg", "jigsaw", "kangaroo", "lobster", "mango", "napkin", "octopus", "parcel",
    "quilt", "raccoon", "saddle", "teapot", "tunnel", "vulture", "walnut", "yacht", "zipper",
    "almond", "beaver", "cactus", "dragon", "emerald", "flannel", "goblin", "harvest",
    "insect", "jelly", "koala", "lettuce", "marble", "nugget", "oyster", "pebble", "rattle",
    "sausage", "timber", "velvet", "wizard", "acorn", "bamboo", "cobweb", "dungeon",
)
