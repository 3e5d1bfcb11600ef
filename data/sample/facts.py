"""The facts the bundled corpus is written from: small tables of real-world entities.

Figures are rounded, well-known values; the corpus is for demos and tests, not a reference.
"""

# name, height (m), range, countries, first ascent year
MOUNTAINS = [
    ("Mount Everest", 8849, "Himalayas", "Nepal and China", 1953),
    ("K2", 8611, "Karakoram", "Pakistan and China", 1954),
    ("Kangchenjunga", 8586, "Himalayas", "Nepal and India", 1955),
    ("Lhotse", 8516, "Himalayas", "Nepal and China", 1956),
    ("Makalu", 8485, "Himalayas", "Nepal and China", 1955),
    ("Cho Oyu", 8188, "Himalayas", "Nepal and China", 1954),
    ("Dhaulagiri", 8167, "Himalayas", "Nepal", 1960),
    ("Manaslu", 8163, "Himalayas", "Nepal", 1956),
    ("Nanga Parbat", 8126, "Himalayas", "Pakistan", 1953),
    ("Annapurna", 8091, "Himalayas", "Nepal", 1950),
    ("Aconcagua", 6961, "Andes", "Argentina", 1897),
    ("Denali", 6190, "Alaska Range", "the United States", 1913),
    ("Kilimanjaro", 5895, "Eastern Rift", "Tanzania", 1889),
    ("Mount Elbrus", 5642, "Caucasus", "Russia", 1874),
    ("Vinson Massif", 4892, "Ellsworth Mountains", "Antarctica", 1966),
    ("Mont Blanc", 4806, "Alps", "France and Italy", 1786),
    ("Matterhorn", 4478, "Alps", "Switzerland and Italy", 1865),
    ("Mount Fuji", 3776, "Fuji volcanic zone", "Japan", 663),
]

EVEREST = [
    ("Mount Everest", "Mount Everest is Earth's highest mountain above sea level. A 2020 survey by "
     "China and Nepal measured its summit at 8,848.86 metres. It lies in the Mahalangur Himal "
     "sub-range of the Himalayas, on the border between Nepal and the Tibet Autonomous Region of "
     "China. In Nepali it is called Sagarmatha and in Tibetan Chomolungma."),
    ("First ascent of Mount Everest", "Tenzing Norgay and Edmund Hillary made the first confirmed "
     "ascent of Mount Everest on 29 May 1953, climbing the southeast ridge from Nepal as members of "
     "a British expedition led by John Hunt. Whether George Mallory and Andrew Irvine reached the "
     "summit in 1924 remains unknown."),
    ("Climbing Mount Everest", "Most climbers reach the summit of Everest by the southeast ridge "
     "from Nepal or the northeast ridge from Tibet. The South Base Camp lies at about 5,364 metres. "
     "Above 8,000 metres is the death zone, where the air holds about a third of the oxygen at sea "
     "level, and most climbers use bottled oxygen. The climbing season peaks in May."),
    ("Geology of Mount Everest", "The rocks at the summit of Mount Everest are Ordovician limestone "
     "that formed on the floor of the Tethys Ocean. The mountain rises by a few millimetres a year "
     "as the Indian plate pushes under the Eurasian plate."),
    ("Weather on Mount Everest", "Winds at the summit of Everest can exceed 280 kilometres per hour "
     "in winter, and the temperature there never rises above freezing. The jet stream usually "
     "moves north in late May, which opens a short window of calmer weather."),
    ("Khumbu Icefall", "The Khumbu Icefall sits at the head of the Khumbu Glacier above Everest "
     "Base Camp. Its ice moves about a metre a day, and Sherpa guides called Icefall Doctors fix "
     "ladders and ropes across its crevasses each season."),
    ("Sherpa people", "The Sherpa are an ethnic group of the mountain regions of Nepal. Many work "
     "as guides and porters on Himalayan expeditions, and Sherpa climbers hold records for the "
     "most ascents of Mount Everest; Kami Rita Sherpa has summited more than 25 times."),
]

# name, capital, continent, population (millions, rounded), language, currency
COUNTRIES = [
    ("France", "Paris", "Europe", 68, "French", "euro"),
    ("Germany", "Berlin", "Europe", 84, "German", "euro"),
    ("Spain", "Madrid", "Europe", 48, "Spanish", "euro"),
    ("Italy", "Rome", "Europe", 59, "Italian", "euro"),
    ("Portugal", "Lisbon", "Europe", 10, "Portuguese", "euro"),
    ("Netherlands", "Amsterdam", "Europe", 18, "Dutch", "euro"),
    ("Sweden", "Stockholm", "Europe", 10, "Swedish", "Swedish krona"),
    ("Norway", "Oslo", "Europe", 5, "Norwegian", "Norwegian krone"),
    ("Poland", "Warsaw", "Europe", 37, "Polish", "zloty"),
    ("Greece", "Athens", "Europe", 10, "Greek", "euro"),
    ("United Kingdom", "London", "Europe", 68, "English", "pound sterling"),
    ("Ireland", "Dublin", "Europe", 5, "Irish and English", "euro"),
    ("Nepal", "Kathmandu", "Asia", 30, "Nepali", "Nepalese rupee"),
    ("India", "New Delhi", "Asia", 1430, "Hindi and English", "Indian rupee"),
    ("China", "Beijing", "Asia", 1410, "Mandarin Chinese", "renminbi"),
    ("Japan", "Tokyo", "Asia", 124, "Japanese", "yen"),
    ("South Korea", "Seoul", "Asia", 52, "Korean", "won"),
    ("Thailand", "Bangkok", "Asia", 70, "Thai", "baht"),
    ("Vietnam", "Hanoi", "Asia", 100, "Vietnamese", "dong"),
    ("Indonesia", "Jakarta", "Asia", 278, "Indonesian", "rupiah"),
    ("Pakistan", "Islamabad", "Asia", 240, "Urdu and English", "Pakistani rupee"),
    ("Turkey", "Ankara", "Asia", 85, "Turkish", "lira"),
    ("Egypt", "Cairo", "Africa", 112, "Arabic", "Egyptian pound"),
    ("Kenya", "Nairobi", "Africa", 55, "Swahili and English", "Kenyan shilling"),
    ("Tanzania", "Dodoma", "Africa", 66, "Swahili and English", "Tanzanian shilling"),
    ("Nigeria", "Abuja", "Africa", 223, "English", "naira"),
    ("South Africa", "Pretoria", "Africa", 60, "eleven official languages", "rand"),
    ("Morocco", "Rabat", "Africa", 37, "Arabic and Berber", "dirham"),
    ("Ethiopia", "Addis Ababa", "Africa", 126, "Amharic", "birr"),
    ("United States", "Washington, D.C.", "North America", 335, "English", "US dollar"),
    ("Canada", "Ottawa", "North America", 40, "English and French", "Canadian dollar"),
    ("Mexico", "Mexico City", "North America", 129, "Spanish", "Mexican peso"),
    ("Brazil", "Brasilia", "South America", 216, "Portuguese", "real"),
    ("Argentina", "Buenos Aires", "South America", 46, "Spanish", "Argentine peso"),
    ("Chile", "Santiago", "South America", 20, "Spanish", "Chilean peso"),
    ("Peru", "Lima", "South America", 34, "Spanish and Quechua", "sol"),
    ("Colombia", "Bogota", "South America", 52, "Spanish", "Colombian peso"),
    ("Australia", "Canberra", "Oceania", 27, "English", "Australian dollar"),
    ("New Zealand", "Wellington", "Oceania", 5, "English and Maori", "New Zealand dollar"),
    ("Iceland", "Reykjavik", "Europe", 0.4, "Icelandic", "Icelandic krona"),
]

# name, order from the Sun, known moons, diameter (km), a fact
PLANETS = [
    ("Mercury", 1, 0, 4879, "A year on Mercury lasts 88 Earth days."),
    ("Venus", 2, 0, 12104, "Venus is the hottest planet because of its thick carbon dioxide atmosphere."),
    ("Earth", 3, 1, 12742, "Earth is the only planet known to support life."),
    ("Mars", 4, 2, 6779, "Mars has the tallest volcano in the solar system, Olympus Mons."),
    ("Jupiter", 5, 95, 139820, "Jupiter's Great Red Spot is a storm larger than Earth."),
    ("Saturn", 6, 146, 116460, "Saturn's rings are made mostly of ice."),
    ("Uranus", 7, 28, 50724, "Uranus rotates on its side."),
    ("Neptune", 8, 16, 49244, "Neptune has the strongest winds in the solar system."),
]

# genre, origin decade, origin place, typical instruments, well-known artists
GENRES = [
    ("jazz", "1910s", "New Orleans", "trumpet, saxophone, piano and double bass",
     ["Louis Armstrong", "Miles Davis", "Ella Fitzgerald"]),
    ("blues", "1870s", "the Deep South of the United States", "guitar, harmonica and voice",
     ["B.B. King", "Muddy Waters", "Bessie Smith"]),
    ("rock and roll", "1950s", "the United States", "electric guitar, bass and drums",
     ["Chuck Berry", "Elvis Presley", "Little Richard"]),
    ("reggae", "1960s", "Jamaica", "bass, drums and offbeat guitar", ["Bob Marley", "Toots Hibbert"]),
    ("hip hop", "1970s", "the Bronx in New York City", "turntables, samplers and rapping",
     ["Grandmaster Flash", "Run-DMC", "Lauryn Hill"]),
    ("bossa nova", "1950s", "Rio de Janeiro", "nylon-string guitar and soft vocals",
     ["Joao Gilberto", "Antonio Carlos Jobim"]),
    ("flamenco", "18th century", "Andalusia in Spain", "guitar, handclaps and cante singing",
     ["Paco de Lucia", "Camaron de la Isla"]),
    ("classical music", "18th century", "Europe", "orchestra, piano and string quartet",
     ["Wolfgang Amadeus Mozart", "Ludwig van Beethoven"]),
    ("baroque music", "17th century", "Europe", "harpsichord, violin and organ",
     ["Johann Sebastian Bach", "Antonio Vivaldi"]),
    ("electronic dance music", "1980s", "Chicago and Detroit", "synthesizers and drum machines",
     ["Daft Punk", "Frankie Knuckles"]),
    ("country music", "1920s", "the southern United States", "acoustic guitar, fiddle and banjo",
     ["Johnny Cash", "Dolly Parton"]),
    ("soul", "1950s", "the United States", "voice, horns and organ", ["Aretha Franklin", "Otis Redding"]),
    ("K-pop", "1990s", "South Korea", "synthesizers, vocals and choreography", ["BTS", "BLACKPINK"]),
    ("Afrobeat", "1960s", "Nigeria", "horns, percussion and guitar", ["Fela Kuti", "Tony Allen"]),
    ("punk rock", "1970s", "New York and London", "fast electric guitar and drums",
     ["the Ramones", "the Clash"]),
]

# name, born, nationality, known for
MUSICIANS = [
    ("Wolfgang Amadeus Mozart", 1756, "Austrian", "the opera The Magic Flute and 41 symphonies"),
    ("Ludwig van Beethoven", 1770, "German", "nine symphonies, composed partly while deaf"),
    ("Johann Sebastian Bach", 1685, "German", "the Brandenburg Concertos and the Goldberg Variations"),
    ("Antonio Vivaldi", 1678, "Italian", "The Four Seasons violin concertos"),
    ("Frederic Chopin", 1810, "Polish", "his nocturnes and etudes for solo piano"),
    ("Louis Armstrong", 1901, "American", "his trumpet playing and the song What a Wonderful World"),
    ("Miles Davis", 1926, "American", "the album Kind of Blue"),
    ("Ella Fitzgerald", 1917, "American", "her scat singing and the Songbook recordings"),
    ("Bob Marley", 1945, "Jamaican", "the songs One Love and Redemption Song"),
    ("The Beatles", 1960, "British", "the albums Abbey Road and Sgt. Pepper's Lonely Hearts Club Band"),
    ("Aretha Franklin", 1942, "American", "the song Respect"),
    ("Johnny Cash", 1932, "American", "the songs Ring of Fire and Folsom Prison Blues"),
    ("Fela Kuti", 1938, "Nigerian", "pioneering Afrobeat"),
    ("Antonio Carlos Jobim", 1927, "Brazilian", "the song The Girl from Ipanema"),
    ("Paco de Lucia", 1947, "Spanish", "modernising flamenco guitar"),
    ("David Bowie", 1947, "British", "the character Ziggy Stardust"),
    ("Nina Simone", 1933, "American", "the songs Feeling Good and I Put a Spell on You"),
    ("Ravi Shankar", 1920, "Indian", "bringing the sitar to audiences around the world"),
    ("Joni Mitchell", 1943, "Canadian", "the album Blue"),
    ("Ryuichi Sakamoto", 1952, "Japanese", "Yellow Magic Orchestra and film scores"),
]

# instrument, family, a fact
INSTRUMENTS = [
    ("piano", "keyboard", "A modern piano has 88 keys."),
    ("violin", "string", "A violin has four strings tuned in fifths."),
    ("cello", "string", "The cello is played sitting down, held between the knees."),
    ("guitar", "string", "A standard guitar has six strings."),
    ("trumpet", "brass", "A trumpet has three valves."),
    ("saxophone", "woodwind", "The saxophone was invented by Adolphe Sax in the 1840s."),
    ("flute", "woodwind", "The flute is one of the oldest instruments; bone flutes are 40,000 years old."),
    ("clarinet", "woodwind", "The clarinet uses a single reed."),
    ("drum kit", "percussion", "A basic drum kit has a bass drum, a snare drum and cymbals."),
    ("harp", "string", "A concert harp has 47 strings and seven pedals."),
    ("sitar", "string", "The sitar has sympathetic strings that resonate under the played ones."),
    ("organ", "keyboard", "Pipe organs can have thousands of pipes."),
    ("tuba", "brass", "The tuba is the lowest-pitched brass instrument."),
    ("harmonica", "free reed", "A harmonica plays different notes when you blow and when you draw."),
    ("ukulele", "string", "The ukulele came to Hawaii with Portuguese immigrants in the 1870s."),
]

# animal, class, habitat, diet, a fact
ANIMALS = [
    ("African elephant", "mammal", "savannas and forests of Africa", "herbivore",
     "It is the largest land animal."),
    ("blue whale", "mammal", "all the oceans", "krill", "It is the largest animal ever known to have lived."),
    ("snow leopard", "mammal", "mountains of Central Asia and the Himalayas", "carnivore",
     "It can leap about 15 metres."),
    ("yak", "mammal", "the Tibetan Plateau and the Himalayas", "herbivore",
     "Its thick coat lets it live above 5,000 metres."),
    ("giant panda", "mammal", "mountain forests of central China", "bamboo",
     "It eats up to 38 kilograms of bamboo a day."),
    ("emperor penguin", "bird", "Antarctica", "fish and krill",
     "It is the tallest and heaviest of all penguins."),
    ("bald eagle", "bird", "North America", "fish", "It is the national bird of the United States."),
    ("bar-headed goose", "bird", "Central Asia", "grasses",
     "It migrates over the Himalayas at more than 7,000 metres."),
    ("octopus", "mollusc", "oceans worldwide", "crabs and fish", "It has three hearts and blue blood."),
    ("honey bee", "insect", "gardens and meadows worldwide", "nectar and pollen",
     "It tells other bees where flowers are with a waggle dance."),
    ("monarch butterfly", "insect", "North America", "milkweed and nectar",
     "It migrates up to 4,800 kilometres to Mexico."),
    ("green sea turtle", "reptile", "tropical oceans", "seagrass", "It can live more than 80 years."),
    ("Komodo dragon", "reptile", "Indonesian islands", "carnivore", "It is the largest living lizard."),
    ("cheetah", "mammal", "African savannas", "carnivore",
     "It is the fastest land animal, reaching about 100 kilometres per hour."),
    ("red fox", "mammal", "the Northern Hemisphere", "omnivore", "It uses Earth's magnetic field to hunt."),
    ("axolotl", "amphibian", "lakes near Mexico City", "worms and small fish",
     "It can regrow lost limbs."),
    ("salmon", "fish", "the North Atlantic and Pacific", "insects and small fish",
     "It returns to the river where it hatched to spawn."),
    ("dolphin", "mammal", "oceans worldwide", "fish and squid", "It sleeps with one half of its brain at a time."),
    ("kangaroo", "mammal", "Australia", "herbivore", "It cannot walk backwards easily."),
    ("owl", "bird", "every continent except Antarctica", "small mammals",
     "It can turn its head about 270 degrees."),
]

# river, length (km), continent, mouth
RIVERS = [
    ("Nile", 6650, "Africa", "the Mediterranean Sea"),
    ("Amazon", 6400, "South America", "the Atlantic Ocean"),
    ("Yangtze", 6300, "Asia", "the East China Sea"),
    ("Mississippi", 3730, "North America", "the Gulf of Mexico"),
    ("Danube", 2850, "Europe", "the Black Sea"),
    ("Ganges", 2525, "Asia", "the Bay of Bengal"),
    ("Rhine", 1230, "Europe", "the North Sea"),
    ("Thames", 346, "Europe", "the North Sea"),
    ("Mekong", 4900, "Asia", "the South China Sea"),
    ("Congo", 4700, "Africa", "the Atlantic Ocean"),
]

# scientist, born, field, known for
SCIENTISTS = [
    ("Marie Curie", 1867, "physics and chemistry", "discovering polonium and radium"),
    ("Albert Einstein", 1879, "physics", "the theory of relativity"),
    ("Isaac Newton", 1643, "physics and mathematics", "the laws of motion and gravitation"),
    ("Charles Darwin", 1809, "biology", "the theory of evolution by natural selection"),
    ("Ada Lovelace", 1815, "mathematics", "the first published computer program"),
    ("Alan Turing", 1912, "computer science", "the Turing machine and the Turing test"),
    ("Rosalind Franklin", 1920, "chemistry", "X-ray images that revealed the structure of DNA"),
    ("Galileo Galilei", 1564, "astronomy", "observing the moons of Jupiter"),
    ("Dmitri Mendeleev", 1834, "chemistry", "the periodic table of the elements"),
    ("Nikola Tesla", 1856, "engineering", "alternating current electrical systems"),
    ("Gregor Mendel", 1822, "biology", "the laws of inheritance"),
    ("Katherine Johnson", 1918, "mathematics", "calculating orbits for NASA's early spaceflights"),
    ("Srinivasa Ramanujan", 1887, "mathematics", "infinite series and number theory"),
    ("Tu Youyou", 1930, "pharmacology", "discovering artemisinin against malaria"),
    ("Jane Goodall", 1934, "primatology", "studying wild chimpanzees in Tanzania"),
]

HOBBIES = ["hiking", "painting", "cooking", "reading", "gardening", "playing chess", "photography",
           "running", "knitting", "birdwatching", "playing the guitar", "baking bread", "swimming",
           "cycling", "learning languages", "writing poetry"]

FOODS = ["pizza", "sushi", "tacos", "curry", "pasta", "dumplings", "pho", "falafel", "paella",
         "ramen", "salad", "pancakes"]
